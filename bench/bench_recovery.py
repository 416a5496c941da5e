#!/usr/bin/env python3
"""Recovery after an outage: how long the controller takes to hand the CSMS what it stored.

The controller runs as a subprocess pointed at a CSMS port where nothing listens yet.
N chargers (a lean raw-protocol client on uvloop, its own process) connect; the
controller serves them offline. Each charger sends a BootNotification, a
StartTransaction, then M MeterValues (with the transactionId it was given, meter
reading k = 1..M), one call in flight, so the controller stores M + 2 messages per
charger (the boot for replay, the start and the M MeterValues in the outbox).

Then the CSMS stand-in starts on that port. It answers every CALL after a fixed delay
(5 ms, asyncio.sleep): StartTransaction with a fresh transactionId and Accepted,
BootNotification Accepted, anything else {}. The benchmark polls the controller's
/metrics until every session is online (an uplink is online only once its outbox has
been drained), confirms with /api/chargers that every outbox is empty, and reports:

* recovery time from the CSMS's start to the last charger online, and its phases (first
  uplink reopened, last uplink reopened, last stored message answered);
* per-charger completion times (p50 / p95 / max) and replay durations;
* the uplink connect rate the CSMS saw (peak per 100 ms, mean), against the configured
  ``[uplink] max_connects_per_second``;
* the lower bound: messages per charger x the round trip of one call straight to the
  CSMS stand-in (its delay plus the loopback), measured in the same run, and the ramp
  N / max_connects_per_second; ratio = recovery / (bound + ramp), target <= 1.5;
* what the CSMS received, per charger: exactly one boot, one start, the M MeterValues in
  order with the CSMS's transactionId, no duplicates; at most one call in flight per
  uplink.

The uplinks reopen with the controller's back-off (``[uplink] reconnect_*``; defaults
unless --reconnect-* is given), cut short by the site probe (``[uplink] probe_interval``,
--probe-interval; 0 turns it off): the first reopen after the CSMS's start waits for the
next probe or retry, so the recovery time includes that wait. --outage makes the outage
longer (the back-offs grow with it).

Run: .venv/bin/python bench/bench_recovery.py [--quick] [--ns 100,1000] [--messages 50]
         [--delay-ms 5] [--rate 100] [--outage S] [--probe-interval S]
         [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_passthrough import other_cpu, wait_quiet
from common import (
    HERE,
    PY,
    LineProc,
    calibrate_loopback,
    cpu_ns,
    descendants,
    free_port,
    keep_last,
    machine_note,
    pct,
    poll_http,
    raise_nofile,
    sys_jiffies,
    ws_frame,
)

REPO = os.path.dirname(HERE)
TARGET_RATIO = 1.5
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
PROBE_IDENTITY = "PROBE-RTT"


# --------------------------------------------------------------------------
# CSMS stand-in role
# --------------------------------------------------------------------------
def csms_main(argv: Sequence[str]) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=5.0)
    a = ap.parse_args(argv)
    delay = a.delay_ms / 1000.0
    clock = time.monotonic
    loads, dumps = json.loads, json.dumps
    st = {
        "calls": 0,
        "conns": 0,
        "open": 0,
        "closed": 0,
        "other_frames": 0,
        "bad_frames": 0,
        "inflight_violations": 0,
        "max_inflight": 0,
    }
    tx_next = [1]
    accepts: list[float] = []
    first_conn: dict[str, float] = {}
    conns_of: Counter[str] = Counter()
    records: dict[str, list[list[Any]]] = {}
    last_answer: dict[str, float] = {}
    # controller turnaround: from an answer sent to the next call of the same charger
    gaps: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    now_iso = BASE_TIME.isoformat().replace("+00:00", "Z")

    async def answer(
        ws: ServerConnection, ident: str, uid: Any, result: dict[str, Any], inflight: list[int]
    ) -> None:
        try:
            await asyncio.sleep(delay)
            await ws.send(dumps([3, uid, result], separators=(",", ":")))
            last_answer[ident] = clock()
        except ConnectionClosed:
            pass
        finally:
            inflight[0] -= 1

    def on_call(ident: str, m: list[Any]) -> dict[str, Any]:
        action = m[2]
        p = m[3] if len(m) > 3 and isinstance(m[3], dict) else {}
        rec = records.setdefault(ident, [])
        if action == "StartTransaction":
            tx = tx_next[0]
            tx_next[0] += 1
            rec.append(["S", tx])
            return {"transactionId": tx, "idTagInfo": {"status": "Accepted"}}
        if action == "BootNotification":
            rec.append(["B"])
            return {"status": "Accepted", "currentTime": now_iso, "interval": 300}
        if action == "MeterValues":
            try:
                k = int(p["meterValue"][0]["sampledValue"][0]["value"])
            except (KeyError, IndexError, TypeError, ValueError):
                k = -1
            rec.append(["M", p.get("transactionId"), k])
            return {}
        if action == "Heartbeat":
            if ident != PROBE_IDENTITY:
                rec.append(["H"])
            return {"currentTime": now_iso}
        rec.append([action])
        return {}

    async def handler(ws: ServerConnection) -> None:
        t = clock()
        accepts.append(t)
        path = ws.request.path if ws.request is not None else "/?"
        ident = path.rsplit("/", 1)[-1]
        first_conn.setdefault(ident, t)
        conns_of[ident] += 1
        st["conns"] += 1
        st["open"] += 1
        inflight = [0]
        try:
            async for msg in ws:
                try:
                    m = loads(msg)
                    kind = m[0]
                except (ValueError, TypeError, IndexError, KeyError):
                    st["bad_frames"] += 1
                    continue
                if kind != 2:
                    st["other_frames"] += 1
                    continue
                st["calls"] += 1
                prev = last_answer.get(ident)
                if prev is not None and inflight[0] == 0 and len(gaps) < 200_000:
                    gaps.append(clock() - prev)
                inflight[0] += 1
                if inflight[0] > 1:
                    st["inflight_violations"] += 1
                st["max_inflight"] = max(st["max_inflight"], inflight[0])
                result = on_call(ident, m)
                task = asyncio.ensure_future(answer(ws, ident, m[1], result, inflight))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except ConnectionClosed:
            pass
        finally:
            st["open"] -= 1
            st["closed"] += 1

    async def control() -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                return
            cmd = line.decode().strip()
            if cmd == "report":
                out: dict[str, Any] = {
                    "stats": st,
                    "accepts": accepts,
                    "first_conn": first_conn,
                    "conns_of": dict(conns_of),
                    "records": records,
                    "last_answer": last_answer,
                    "gaps": gaps,
                }
            else:
                out = {"stats": st}
            sys.stdout.write(json.dumps(out) + "\n")
            sys.stdout.flush()

    async def main() -> None:
        async with serve(
            handler,
            "127.0.0.1",
            a.port,
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
            compression=None,
            backlog=4096,
            ping_interval=None,
        ):
            print(f"READY {clock()!r}", flush=True)
            await control()

    asyncio.run(main())


# --------------------------------------------------------------------------
# chargers role (lean raw-protocol client on uvloop)
# --------------------------------------------------------------------------
class Fleet:
    def __init__(self, loop: asyncio.AbstractEventLoop, messages: int) -> None:
        self.loop = loop
        self.messages = messages
        self.chargers: list[Charger] = []
        self.done = 0
        self.target = 0
        self.all_done: asyncio.Future[bool] = loop.create_future()
        self.c: Counter[str] = Counter()
        self.mv_ts = [
            (BASE_TIME + timedelta(seconds=k)).strftime("%Y-%m-%dT%H:%M:%SZ")
            for k in range(messages + 1)
        ]

    def finished(self) -> None:
        self.done += 1
        if self.done >= self.target and not self.all_done.done():
            self.all_done.set_result(True)


class Charger(asyncio.Protocol):
    """One charger: boot, start, M MeterValues (or, as a probe, K Heartbeats)."""

    def __init__(
        self, fleet: Fleet, i: int, host: str, port: int, path: str, *, probe: int = 0
    ) -> None:
        self.f = fleet
        self.i = i
        self.host = host
        self.port = port
        self.path = path
        self.buf = bytearray()
        self.open = False
        self.ready: asyncio.Future[bool] = fleet.loop.create_future()
        self.tr: asyncio.Transport | None = None
        self.step = 0
        self.uid = ""
        self.tx = 0
        self.probe = probe
        self.lat: list[int] = []
        self.t_sent = 0
        self.closed = False
        self.close_sent = False
        self.finished = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tr = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: ocpp1.6\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before handshake"))
            return
        if not self.close_sent:
            self.f.c["closed_by_controller"] += 1
        if not self.finished:
            self.f.c["closed_mid_script"] += 1

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.open:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(buf[:i])
            del buf[: i + 4]
            if not head.startswith(b"HTTP/1.1 101") or b"ocpp1.6" not in head.lower():
                self.ready.set_exception(ConnectionError(head[:120].decode(errors="replace")))
                assert self.tr is not None
                self.tr.close()
                return
            self.open = True
            self.ready.set_result(True)
            self.next_call()
        while True:
            n = len(buf)
            if n < 2:
                return
            ln = buf[1] & 0x7F
            hl = 2
            if ln == 126:
                if n < 4:
                    return
                ln = (buf[2] << 8) | buf[3]
                hl = 4
            elif ln == 127:
                if n < 10:
                    return
                ln = int.from_bytes(buf[2:10], "big")
                hl = 10
            if n < hl + ln:
                return
            op = buf[0] & 0x0F
            payload = bytes(buf[hl : hl + ln])
            del buf[: hl + ln]
            if op == 1:
                self.on_text(payload)
            elif op == 9 and self.tr is not None:
                self.tr.write(ws_frame(0x8A, payload))
            elif op == 8 and self.tr is not None:
                if not self.close_sent:
                    self.close_sent = True
                    self.f.c["closed_by_controller"] += 1
                    self.tr.write(ws_frame(0x88, payload[:2]))
                self.tr.close()
                return

    def send(self, uid: str, action: str, payload: str) -> None:
        if self.tr is None or self.closed:
            return
        self.uid = uid
        self.t_sent = time.perf_counter_ns()
        self.tr.write(ws_frame(0x81, f'[2,"{uid}","{action}",{payload}]'.encode()))

    def next_call(self) -> None:
        f = self.f
        if self.probe:
            if len(self.lat) >= self.probe:
                self.finish()
            else:
                self.send(f"h{len(self.lat)}", "Heartbeat", "{}")
            return
        s = self.step
        if s == 0:
            self.send(
                "b",
                "BootNotification",
                '{"chargePointVendor":"bench","chargePointModel":"recovery",'
                f'"chargePointSerialNumber":"SN{self.i:05d}"}}',
            )
        elif s == 1:
            self.send(
                "s",
                "StartTransaction",
                f'{{"connectorId":1,"idTag":"T{self.i:05d}","meterStart":0,'
                f'"timestamp":"{f.mv_ts[0]}"}}',
            )
        elif s - 1 <= f.messages:
            k = s - 1
            self.send(
                f"m{k}",
                "MeterValues",
                f'{{"connectorId":1,"transactionId":{self.tx},"meterValue":[{{"timestamp":'
                f'"{f.mv_ts[k]}","sampledValue":[{{"value":"{k}","context":"Sample.Periodic",'
                '"measurand":"Energy.Active.Import.Register","unit":"Wh"}]}]}',
            )
        else:
            self.finish()

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.f.finished()

    def on_text(self, payload: bytes) -> None:
        f = self.f
        try:
            m = json.loads(payload)
            kind, uid = m[0], m[1]
        except (ValueError, TypeError, IndexError, KeyError):
            f.c["bad_frames"] += 1
            return
        if kind == 2:  # a call from the controller: answer {}
            f.c["incoming_calls"] += 1
            if self.tr is not None and not self.closed:
                self.tr.write(ws_frame(0x81, json.dumps([3, uid, {}]).encode()))
            return
        if uid != self.uid or self.finished:
            f.c["mismatched"] += 1
            return
        if self.probe:
            self.lat.append(time.perf_counter_ns() - self.t_sent)
            self.next_call()
            return
        body = m[2] if kind == 3 and isinstance(m[2], dict) else {}
        if kind == 4:
            f.c[f"callerror_{uid[0]}:{m[2]}"] += 1
        if self.step == 0:
            f.c[f"boot_{body.get('status')}"] += 1
        elif self.step == 1:
            tx = body.get("transactionId")
            self.tx = tx if isinstance(tx, int) else 0
            f.c[f"start_{(body.get('idTagInfo') or {}).get('status')}"] += 1
        else:
            f.c["mv_answered"] += 1
        self.step += 1
        self.next_call()

    def close(self) -> None:
        if self.tr is not None and not self.closed:
            self.close_sent = True
            self.tr.write(ws_frame(0x88, (1000).to_bytes(2, "big")))


async def chargers_async() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    fleet: Fleet | None = None

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def connect_all(
        fl: Fleet, host: str, port: int, paths: list[str], *, probe: int, conc: int
    ) -> list[Charger | BaseException]:
        sem = asyncio.Semaphore(conc)

        async def one(i: int, path: str) -> Charger:
            async with sem:
                _, ch = await loop.create_connection(
                    lambda: Charger(fl, i, host, port, path, probe=probe), host, port
                )
                await asyncio.wait_for(ch.ready, 30)
                return ch

        return await asyncio.gather(
            *(one(i, p) for i, p in enumerate(paths, 1)), return_exceptions=True
        )

    while True:
        line = await reader.readline()
        if not line:
            return
        c = json.loads(line)
        cmd = c["cmd"]
        try:
            if cmd == "run":
                fleet = Fleet(loop, c["m"])
                fleet.target = c["n"]
                t0 = time.perf_counter()
                paths = [f"{c['prefix']}{i:05d}" for i in range(1, c["n"] + 1)]
                res = await connect_all(
                    fleet, c["host"], c["port"], paths, probe=0, conc=c["concurrency"]
                )
                ok = [r for r in res if isinstance(r, Charger)]
                bad = [repr(r) for r in res if not isinstance(r, Charger)]
                fleet.chargers = ok
                fleet.target = len(ok)
                t_conn = time.perf_counter() - t0
                if ok:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            asyncio.shield(fleet.all_done), c["timeout"] - t_conn
                        )
                reply(
                    {
                        "ok": not bad and fleet.done == len(ok),
                        "connected": len(ok),
                        "failed": len(bad),
                        "first_error": bad[0] if bad else None,
                        "done": fleet.done,
                        "connect_secs": t_conn,
                        "secs": time.perf_counter() - t0,
                        "counters": dict(fleet.c),
                    }
                )
            elif cmd == "probe":
                pf = Fleet(loop, 0)
                pf.target = 1
                res = await connect_all(
                    pf, c["host"], c["port"], [c["path"]], probe=c["count"], conc=1
                )
                if not isinstance(res[0], Charger):
                    reply({"ok": False, "error": repr(res[0])})
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(pf.all_done), 30)
                ch = res[0]
                lat = sorted(ch.lat[c.get("skip", 5) :])
                ch.close()
                reply(
                    {
                        "ok": bool(lat),
                        "n": len(lat),
                        "p50_ms": pct(lat, 0.5) / 1e6,
                        "p99_ms": pct(lat, 0.99) / 1e6,
                        "min_ms": (lat[0] / 1e6) if lat else float("nan"),
                    }
                )
            elif cmd == "stats":
                live = sum(1 for x in fleet.chargers if not x.closed) if fleet else 0
                reply({"ok": True, "live": live, "counters": dict(fleet.c) if fleet else {}})
            elif cmd == "close":
                if fleet is not None:
                    for x in fleet.chargers:
                        x.close()
                    t_end = time.perf_counter() + 3.0
                    while time.perf_counter() < t_end and not all(x.closed for x in fleet.chargers):
                        await asyncio.sleep(0.05)
                    for x in fleet.chargers:
                        if x.tr is not None and not x.closed:
                            x.tr.abort()
                reply({"ok": True})
            elif cmd == "quit":
                reply({"ok": True})
                return
            else:
                reply({"ok": False, "error": f"unknown cmd {cmd!r}"})
        except Exception as e:  # report, keep serving
            reply({"ok": False, "error": repr(e)})


def chargers_main() -> None:
    import uvloop

    uvloop.run(chargers_async())


# --------------------------------------------------------------------------
# orchestration
# --------------------------------------------------------------------------
METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def scrape(admin_port: int, timeout: float = 5.0) -> dict[str, float]:
    """/metrics as {name{labels}: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        mt = METRIC_LINE.match(line)
        if mt:
            with contextlib.suppress(ValueError):
                out[mt.group(1) + (mt.group(2) or "")] = float(mt.group(3))
    return out


def api_chargers(admin_port: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{admin_port}/api/chargers"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        data: list[dict[str, Any]] = json.loads(r.read())
    return data


def uplinks(m: dict[str, float]) -> dict[str, int]:
    return {
        s: int(m.get(f'ocpp_lc_uplinks{{state="{s}"}}', 0))
        for s in ("online", "draining", "offline")
    }


def check_records(
    records: dict[str, list[list[Any]]], identities: list[str], messages: int
) -> dict[str, Any]:
    """What the CSMS received per charger against what each charger sent."""
    c: Counter[str] = Counter()
    bad_examples: list[str] = []
    for ident in identities:
        rec = records.get(ident, [])
        if not rec:
            c["chargers_with_nothing"] += 1
            continue
        kinds = Counter(r[0] for r in rec)
        c["boots"] += kinds["B"]
        c["starts"] += kinds["S"]
        c["meter_values"] += kinds["M"]
        other = sum(v for k, v in kinds.items() if k not in ("B", "S", "M"))
        c["other_actions"] += other
        problems = []
        if kinds["B"] != 1:
            problems.append(f"{kinds['B']} boots")
        if kinds["S"] != 1:
            problems.append(f"{kinds['S']} starts")
        if rec[0][0] != "B":
            problems.append(f"first is {rec[0][0]}")
        tx = next((r[1] for r in rec if r[0] == "S"), None)
        seen: Counter[int] = Counter()
        last_k = 0
        start_at = next((i for i, r in enumerate(rec) if r[0] == "S"), len(rec))
        for i, r in enumerate(rec):
            if r[0] != "M":
                continue
            k = r[2]
            seen[k] += 1
            if i < start_at:
                c["mv_before_start"] += 1
            if r[1] != tx:
                c["mv_wrong_tx"] += 1
            if seen[k] > 1:
                c["mv_duplicates"] += 1
            elif k <= last_k:
                c["mv_out_of_order"] += 1
            last_k = max(last_k, k)
        missing = sum(1 for k in range(1, messages + 1) if k not in seen)
        c["mv_missing"] += missing
        if missing:
            problems.append(f"{missing} MeterValues missing")
        if problems:
            c["chargers_with_problems"] += 1
            if len(bad_examples) < 5:
                bad_examples.append(f"{ident}: {', '.join(problems)}")
    c["received_total"] = sum(len(records.get(i, [])) for i in identities)
    unknown = [i for i in records if i not in set(identities) and i != PROBE_IDENTITY]
    c["unknown_identities"] = len(unknown)
    return {"counts": dict(c), "examples": bad_examples}


def controller_env(
    a: argparse.Namespace, port: int, admin: int, csms: int, db: str
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "OCPP_LC_LISTEN__HOST": "127.0.0.1",
            "OCPP_LC_LISTEN__PORT": str(port),
            "OCPP_LC_LISTEN__COMPRESSION": "false",
            # every benchmark charger comes from 127.0.0.1
            "OCPP_LC_LISTEN__MAX_CONNECTIONS_PER_IP": "0",
            "OCPP_LC_CSMS__URL": f"ws://127.0.0.1:{csms}",
            "OCPP_LC_STORE__PATH": db,
            "OCPP_LC_ADMIN__HOST": "127.0.0.1",
            "OCPP_LC_ADMIN__PORT": str(admin),
            "OCPP_LC_LOG__LEVEL": "WARNING",
            "OCPP_LC_LOG__FORMAT": "json",
            "OCPP_LC_ADMISSION__UNKNOWN_IDENTITIES": "pass_through",
            # the benchmark's id tags are unknown to the controller: accept them offline
            "OCPP_LC_POLICY__ALLOW_OFFLINE_TX_FOR_UNKNOWN_ID": "true",
            "OCPP_LC_UPLINK__MAX_CONNECTS_PER_SECOND": str(a.rate),
            "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
    )
    for key in ("reconnect_min", "reconnect_max", "reconnect_jitter", "probe_interval"):
        v = getattr(a, key)
        if v is not None:
            env[f"OCPP_LC_UPLINK__{key.upper()}"] = str(v)
    return env


def log_summary(path: str) -> dict[str, int]:
    """Controller log lines by level and event (JSON lines)."""
    c: Counter[str] = Counter()
    try:
        with open(path, errors="replace") as f:
            for line in f:
                try:
                    d = json.loads(line)
                    c[f"{d.get('level', '?')}:{d.get('event', '?')}"] += 1
                except ValueError:
                    c["non-json"] += 1
    except OSError:
        pass
    return dict(c)


def dist(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {"p50": pct(s, 0.5), "p95": pct(s, 0.95), "max": s[-1] if s else float("nan")}


def peak_per_bin(times: list[float], t0: float, width: float = 0.1) -> int:
    bins: Counter[int] = Counter(int((t - t0) // width) for t in times)
    return max(bins.values()) if bins else 0


def run_one(a: argparse.Namespace, n: int, tmp: str) -> dict[str, Any]:
    m = a.messages
    per_charger = m + 2
    port, admin, csms_port = free_port(), free_port(), free_port()
    db = os.path.join(tmp, f"lc-{n}.sqlite3")
    ctl_log = os.path.join(tmp, f"controller-{n}.log")
    procs: list[LineProc] = []
    row: dict[str, Any] = {"n": n, "messages": m, "per_charger": per_charger, "rate": a.rate}
    prefix = f"/ocpp/RC{n}-"
    identities = [f"RC{n}-{i:05d}" for i in range(1, n + 1)]
    print(f"\n=== N={n} chargers x {per_charger} stored messages ===", flush=True)
    try:
        ctl = LineProc(
            [PY, "-m", "proxy", "serve"],
            ctl_log,
            stdin=False,
            env=controller_env(a, port, admin, csms_port, db),
            cwd=REPO,
            stdout_to_log=True,
        )
        procs.append(ctl)
        poll_http(f"http://127.0.0.1:{admin}/readyz", 20.0, ctl.alive)
        chargers = LineProc(
            [PY, os.path.abspath(__file__), "chargers"], os.path.join(tmp, "chargers.log")
        )
        procs.append(chargers)
        load_timeout = a.load_timeout or (60.0 + n * per_charger / 1000.0)
        t_outage = time.monotonic()
        r = chargers.send(
            {
                "cmd": "run",
                "host": "127.0.0.1",
                "port": port,
                "n": n,
                "m": m,
                "prefix": prefix,
                "concurrency": 100,
                "timeout": load_timeout,
            },
            timeout=load_timeout + 40,
        )
        row["load"] = r
        answered = r["done"] * per_charger
        print(
            f"offline phase: {r['connected']}/{n} connected in {r['connect_secs']:.1f}s, "
            f"{r['done']} finished their {per_charger} calls in {r['secs']:.1f}s "
            f"({answered / max(r['secs'], 1e-9):,.0f} answered/s); charger counters "
            f"{json.dumps(r['counters'], sort_keys=True)}",
            flush=True,
        )
        if not r["ok"]:
            raise RuntimeError(f"offline phase incomplete: {r}")
        mt = scrape(admin)
        state0 = uplinks(mt)
        summaries = api_chargers(admin)
        depth0 = sum(x["outbox_depth"] for x in summaries if x["identity"] in set(identities))
        row["before"] = {"uplinks": state0, "outbox_depth": depth0}
        print(
            f"before the CSMS starts: uplinks {state0}, outbox depth {depth0:,} "
            f"(expected {n * (m + 1):,} = N x (start + {m} MeterValues); the boots are kept "
            "apart for replay)",
            flush=True,
        )
        if state0["offline"] != n:
            print(f"  WARNING: {state0['offline']} sessions offline, expected {n}")
        # outage length, then wait (bounded) for the machine to calm down
        left = a.outage - (time.monotonic() - t_outage)
        if left > 0:
            time.sleep(left)
        pids = {
            "controller": descendants(ctl.pid),
            "chargers": [chargers.pid],
        }
        waited = wait_quiet(pids, a.quiet_wait)
        before_other = other_cpu(pids, 0.3)
        print(
            f"waited {waited:.1f}s for quiet; other cpu {before_other:.0f}% of a core "
            "before the CSMS starts",
            flush=True,
        )
        commits0 = scrape(admin)
        # the CSMS comes back
        csms = LineProc(
            [
                PY,
                os.path.abspath(__file__),
                "csms",
                "--port",
                str(csms_port),
                "--delay-ms",
                str(a.delay_ms),
            ],
            os.path.join(tmp, f"csms-{n}.log"),
        )
        procs.append(csms)
        line = csms.readline(20.0).split()
        if not line or line[0] != "READY":
            raise RuntimeError(f"CSMS stand-in did not start: {line}")
        t_up = float(line[1])
        row["outage_s"] = t_up - t_outage
        pids["csms"] = [csms.pid]
        c0 = {k: sum(cpu_ns(p) for p in v) for k, v in pids.items()}
        j0 = sys_jiffies()
        backoff_max = (a.reconnect_max or 60.0) + (
            a.reconnect_jitter if a.reconnect_jitter is not None else 2.0
        )
        ramp = n / a.rate
        deadline = t_up + (a.timeout or (30.0 + 3 * ramp + backoff_max))
        timeline: list[tuple[float, dict[str, int]]] = []
        t_done: float | None = None
        last_print = 0.0
        while time.monotonic() < deadline:
            if not ctl.alive():
                raise RuntimeError(f"controller exited with code {ctl.p.returncode}")
            try:
                st = uplinks(scrape(admin))
            except OSError as e:
                st = {"error": 1}
                print(f"  /metrics failed: {e!r}")
            now = time.monotonic()
            timeline.append((now - t_up, st))
            if now - last_print >= 2.0:
                last_print = now
                print(f"  +{now - t_up:5.1f}s uplinks {st}", flush=True)
            if st.get("online") == n and st.get("draining", 0) == 0 and st.get("offline", 0) == 0:
                t_done = now
                break
            time.sleep(0.1)
        t_end = time.monotonic()
        c1 = {k: sum(cpu_ns(p) for p in v) for k, v in pids.items()}
        j1 = sys_jiffies()
        window = t_end - t_up
        cpu = {k: 100.0 * (c1[k] - c0[k]) / 1e9 / window for k in pids}
        busy = 100.0 * (os.cpu_count() or 1) * (j1[0] - j0[0]) / max(1, j1[1] - j0[1])
        row["cpu_pct"] = cpu
        row["other_cpu_pct"] = max(0.0, busy - sum(cpu.values()))
        row["timeline"] = timeline
        if t_done is None:
            print(f"  TIMEOUT: not every uplink online after {window:.0f}s", flush=True)
        row["recovery_s"] = None if t_done is None else t_done - t_up
        # confirm with the API: every outbox empty, every uplink online
        summaries = api_chargers(admin)
        mine = [x for x in summaries if x["identity"] in set(identities)]
        row["after"] = {
            "outbox_depth": sum(x["outbox_depth"] for x in mine),
            "dead_letters": sum(x.get("dead_letters", 0) for x in mine),
            "states": dict(Counter(x["uplink_state"] for x in mine)),
            "connected": sum(1 for x in mine if x["connected"]),
        }
        csms_report = csms_report_of(csms)
        # round trip of one call straight to the CSMS stand-in, and through the controller
        direct = chargers.send(
            {
                "cmd": "probe",
                "host": "127.0.0.1",
                "port": csms_port,
                "path": f"/{PROBE_IDENTITY}",
                "count": 105,
            },
            timeout=40,
        )
        row["direct_rtt"] = direct
        ch_stats = chargers.send({"cmd": "stats"}, timeout=10)
        row["chargers_after"] = ch_stats
        try:
            m1 = scrape(admin)
            row["metrics_after"] = {
                k: v
                for k, v in m1.items()
                if k.startswith(("ocpp_lc_replayed_messages", "ocpp_lc_protocol_events"))
            }
            cnt = "ocpp_lc_store_commit_seconds_count"
            tot = "ocpp_lc_store_commit_seconds_sum"
            k_ = m1.get(cnt, 0.0) - commits0.get(cnt, 0.0)
            row["commits"] = {
                "count": k_,
                "mean_ms": 1000.0 * (m1.get(tot, 0.0) - commits0.get(tot, 0.0)) / k_
                if k_
                else None,
            }
        except OSError:
            row["metrics_after"] = {}
            row["commits"] = {"count": 0, "mean_ms": None}
    finally:
        for p in reversed(procs):
            if p.args[-1] == "chargers":
                with contextlib.suppress(Exception):
                    p.send({"cmd": "close"}, timeout=10)
            p.stop()
    # the store after the controller stopped
    try:
        with sqlite3.connect(db) as con:
            row["store_after"] = dict(
                con.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
            )
    except sqlite3.Error as e:
        row["store_after"] = {"error": repr(e)}
    row["log"] = log_summary(ctl_log)
    row["log_tail"] = keep_last(ctl_log, 8)[1]
    analyse(row, csms_report, identities, t_up)
    return row


def csms_report_of(csms: LineProc) -> dict[str, Any]:
    r: dict[str, Any] = csms.send("report", timeout=30.0)
    return r


def analyse(row: dict[str, Any], rep: dict[str, Any], identities: list[str], t_up: float) -> None:
    n, m = row["n"], row["messages"]
    per_charger = row["per_charger"]
    accepts = [t for t in rep["accepts"]]
    first = rep["first_conn"]
    last = rep["last_answer"]
    mine_first = [first[i] - t_up for i in identities if i in first]
    mine_last = [last[i] - t_up for i in identities if i in last]
    replay_secs = [last[i] - first[i] for i in identities if i in last and i in first]
    up_accepts = sorted(t for t in accepts)
    # accepts include the probe's connection, which came after the recovery
    probe_t = first.get(PROBE_IDENTITY)
    if probe_t is not None:
        up_accepts.remove(probe_t)
    row["connects"] = {
        "count": len(up_accepts),
        "first_s": (up_accepts[0] - t_up) if up_accepts else None,
        "last_s": (up_accepts[-1] - t_up) if up_accepts else None,
        "peak_per_100ms": peak_per_bin(up_accepts, t_up),
        "peak_per_1s": peak_per_bin(up_accepts, t_up, 1.0),
        "mean_per_s": (len(up_accepts) - 1) / (up_accepts[-1] - up_accepts[0])
        if len(up_accepts) > 1 and up_accepts[-1] > up_accepts[0]
        else None,
        "interval_ms": dist([1000.0 * (y - x) for x, y in itertools.pairwise(up_accepts)]),
        "reconnected_identities": sum(1 for i in identities if rep["conns_of"].get(i, 0) > 1),
    }
    row["completion_s"] = dist(mine_last)
    row["connect_s"] = dist(mine_first)
    row["replay_per_charger_s"] = dist(replay_secs)
    row["last_answer_s"] = max(mine_last) if mine_last else None
    row["csms_stats"] = rep["stats"]
    row["turnaround_ms"] = dist([g * 1000.0 for g in rep["gaps"]])
    chk = check_records(rep["records"], identities, m)
    row["received"] = chk
    rtt_ms = row["direct_rtt"].get("p50_ms", float("nan"))
    bound = per_charger * rtt_ms / 1000.0
    ramp = n / row["rate"]
    row["bound_s"] = bound
    row["ramp_s"] = ramp
    rec = row["recovery_s"]
    row["ratio"] = rec / (bound + ramp) if rec is not None else None
    first_s = row["connects"]["first_s"]
    row["ratio_after_first_reopen"] = (
        (rec - first_s) / (bound + ramp) if rec is not None and first_s is not None else None
    )
    row["pass"] = row["ratio"] is not None and row["ratio"] <= TARGET_RATIO
    expected_total = n * per_charger
    row["expected_total"] = expected_total


def report(rows: list[dict[str, Any]], a: argparse.Namespace) -> None:
    def f(v: Any, spec: str = ".2f") -> str:
        return "n/a" if v is None else format(v, spec)

    print("\n=== Recovery after an outage ===")
    backoff = (
        f"reconnect_min={a.reconnect_min if a.reconnect_min is not None else '1.0 (default)'} "
        f"reconnect_max={a.reconnect_max if a.reconnect_max is not None else '60 (default)'} "
        f"reconnect_jitter="
        f"{a.reconnect_jitter if a.reconnect_jitter is not None else '2.0 (default)'} "
        f"probe_interval={a.probe_interval if a.probe_interval is not None else '0.5 (default)'}"
    )
    print(
        f"CSMS delay {a.delay_ms:g} ms; max_connects_per_second={a.rate:g}; {backoff}; "
        f"target: recovery <= {TARGET_RATIO}x (bound + ramp)"
    )
    hdr = (
        f"{'N':>5} {'msgs/chg':>8} {'outage s':>8} {'rtt ms':>6} {'bound s':>7} {'ramp s':>6} "
        f"{'recovery s':>10} {'ratio':>6} {'result':>6} {'1st reopen s':>12} "
        f"{'last reopen s':>13} {'last answer s':>13} {'ctl cpu%':>8} {'csms cpu%':>9} "
        f"{'other cpu%':>10}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(
            f"{r['n']:>5} {r['per_charger']:>8} {r['outage_s']:>8.1f} "
            f"{r['direct_rtt'].get('p50_ms', float('nan')):>6.2f} {r['bound_s']:>7.2f} "
            f"{r['ramp_s']:>6.1f} {f(r['recovery_s']):>10} {f(r['ratio']):>6} "
            f"{'PASS' if r['pass'] else 'FAIL':>6} {f(r['connects']['first_s']):>12} "
            f"{f(r['connects']['last_s']):>13} {f(r['last_answer_s']):>13} "
            f"{r['cpu_pct']['controller']:>8.0f} {r['cpu_pct']['csms']:>9.0f} "
            f"{r['other_cpu_pct']:>10.0f}"
        )
    print()
    for r in rows:
        c = r["connects"]
        print(
            f"N={r['n']}: per-charger completion (s after the CSMS started) "
            f"p50 {r['completion_s']['p50']:.2f} p95 {r['completion_s']['p95']:.2f} "
            f"max {r['completion_s']['max']:.2f}; uplink reopened p50 "
            f"{r['connect_s']['p50']:.2f} p95 {r['connect_s']['p95']:.2f} max "
            f"{r['connect_s']['max']:.2f}; replay per charger (reopen to last answer) p50 "
            f"{r['replay_per_charger_s']['p50']:.2f} p95 {r['replay_per_charger_s']['p95']:.2f} "
            f"max {r['replay_per_charger_s']['max']:.2f}"
        )
        print(
            f"  upstream connects at the CSMS: {c['count']} (peak {c['peak_per_100ms']} per "
            f"100 ms = {c['peak_per_100ms'] * 10}/s; peak {c['peak_per_1s']} in a 1 s bin; "
            f"mean {f(c['mean_per_s'], '.0f')}/s over "
            f"first..last; configured {r['rate']:g}/s); interval between connects p50 "
            f"{c['interval_ms']['p50']:.1f} ms, p95 {c['interval_ms']['p95']:.1f} "
            f"(1/rate = {1000 / r['rate']:.1f} ms); identities that connected more than "
            f"once: {c['reconnected_identities']}; ratio counted from the first reopen "
            f"{f(r['ratio_after_first_reopen'])}"
        )
        t = r["turnaround_ms"]
        cm = r["commits"]
        print(
            f"  controller turnaround per replayed call (CSMS answer sent -> next stored call "
            f"received): p50 {t['p50']:.2f} ms, p95 {t['p95']:.2f}, max {t['max']:.1f}; store "
            f"commits during recovery {cm['count']:,.0f}, mean "
            f"{f(cm['mean_ms'])} ms; CPU (% of a core): controller "
            f"{r['cpu_pct']['controller']:.0f}, CSMS {r['cpu_pct']['csms']:.0f}, chargers "
            f"{r['cpu_pct']['chargers']:.0f}, other {r['other_cpu_pct']:.0f}"
        )
        rtt = r["direct_rtt"]
        print(
            f"  direct call to the CSMS stand-in: p50 {rtt.get('p50_ms', float('nan')):.2f} ms "
            f"(p99 {rtt.get('p99_ms', float('nan')):.2f}, "
            f"min {rtt.get('min_ms', float('nan')):.2f}) "
            f"= {r['delay_ms']:g} ms delay + {rtt.get('p50_ms', 0) - r['delay_ms']:.2f} ms; "
            f"bound = {r['per_charger']} x {rtt.get('p50_ms', float('nan')):.2f} ms"
        )
        cnt = r["received"]["counts"]
        ok = (
            cnt.get("received_total") == r["expected_total"]
            and cnt.get("boots") == r["n"]
            and cnt.get("starts") == r["n"]
            and cnt.get("meter_values") == r["n"] * r["messages"]
            and not any(
                cnt.get(k)
                for k in (
                    "mv_duplicates",
                    "mv_out_of_order",
                    "mv_missing",
                    "mv_wrong_tx",
                    "mv_before_start",
                    "chargers_with_problems",
                    "chargers_with_nothing",
                    "other_actions",
                )
            )
        )
        st = r["csms_stats"]
        print(
            f"  CSMS received {cnt.get('received_total', 0):,} calls for the chargers "
            f"(expected {r['expected_total']:,} = N x {r['per_charger']}): boots "
            f"{cnt.get('boots', 0)}, starts {cnt.get('starts', 0)}, MeterValues "
            f"{cnt.get('meter_values', 0):,}; duplicates {cnt.get('mv_duplicates', 0)}, "
            f"out of order {cnt.get('mv_out_of_order', 0)}, missing {cnt.get('mv_missing', 0)}, "
            f"wrong transactionId {cnt.get('mv_wrong_tx', 0)}, before the start "
            f"{cnt.get('mv_before_start', 0)}, other actions {cnt.get('other_actions', 0)}; "
            f"max calls in flight per uplink {st['max_inflight']} "
            f"({st['inflight_violations']} over 1) -> {'OK' if ok else 'PROBLEM'}"
        )
        for ex in r["received"]["examples"]:
            print(f"    e.g. {ex}")
        a_ = r["after"]
        print(
            f"  after: API outbox depth {a_['outbox_depth']}, dead letters "
            f"{a_['dead_letters']}, states {a_['states']}, connected {a_['connected']}; "
            f"store rows {r['store_after']}; chargers closed by the controller "
            f"{r['chargers_after']['counters'].get('closed_by_controller', 0)}, calls "
            f"from the controller {r['chargers_after']['counters'].get('incoming_calls', 0)}"
        )
        problems = {k: v for k, v in r["log"].items() if not k.startswith("info:")}
        print(f"  controller log (WARNING and above): {problems or 'none'}")
        if problems:
            for line in r["log_tail"]:
                print("    " + line[:300])


def on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="N=100 only (under a minute)")
    ap.add_argument("--ns", help="charger counts (default 100,1000; --quick 100)")
    ap.add_argument("--messages", type=int, default=50, help="MeterValues per charger")
    ap.add_argument("--delay-ms", type=float, default=5.0, help="CSMS answer delay")
    ap.add_argument(
        "--rate", type=float, default=100.0, help="[uplink] max_connects_per_second (default 100)"
    )
    ap.add_argument("--reconnect-min", type=float, help="[uplink] reconnect_min (default: 1.0)")
    ap.add_argument("--reconnect-max", type=float, help="[uplink] reconnect_max (default: 60)")
    ap.add_argument(
        "--reconnect-jitter", type=float, help="[uplink] reconnect_jitter (default: 2.0)"
    )
    ap.add_argument(
        "--probe-interval", type=float, help="[uplink] probe_interval (default: 0.5; 0: off)"
    )
    ap.add_argument(
        "--outage", type=float, default=0.0, help="min s from the first charger to the CSMS start"
    )
    ap.add_argument("--timeout", type=float, help="s for the recovery phase (default derived)")
    ap.add_argument("--load-timeout", type=float, help="s for the offline phase (default derived)")
    ap.add_argument("--quiet-wait", type=float, help="s to wait for quiet (default 10; quick 5)")
    ap.add_argument("--keep-logs", metavar="DIR")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    ns = [int(x) for x in (a.ns or ("100" if a.quick else "100,1000")).split(",")]
    if a.quiet_wait is None:
        a.quiet_wait = 5.0 if a.quick else 10.0
    signal.signal(signal.SIGTERM, on_sigterm)
    t_start = time.time()
    nofile = raise_nofile(4 * max(ns) + 256)
    print("nofile (soft before, soft now, hard):", nofile)
    note = machine_note()
    print(f"machine: {note}")
    j0 = sys_jiffies()
    time.sleep(0.5)
    j1 = sys_jiffies()
    busy0 = 100.0 * (os.cpu_count() or 1) * (j1[0] - j0[0]) / max(1, j1[1] - j0[1])
    print(f"machine busy before start: {busy0:.0f}% of a core (other work)")
    rt, c50, c99 = calibrate_loopback(1.0)
    print(
        f"calibration: blocking loopback TCP ping-pong, 2 processes: {rt:,.0f} round trips/s, "
        f"p50 {c50:.1f} us, p99 {c99:.1f} us"
    )
    tmp = tempfile.mkdtemp(prefix="bench-recovery-")
    rows: list[dict[str, Any]] = []
    code = 0
    try:
        for n in ns:
            row = run_one(a, n, tmp)
            row["delay_ms"] = a.delay_ms
            rows.append(row)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    except Exception as e:
        print(f"\nERROR: {e!r}", file=sys.stderr)
        code = 1
    finally:
        if a.keep_logs:
            os.makedirs(a.keep_logs, exist_ok=True)
            for fn in os.listdir(tmp):
                with contextlib.suppress(OSError):
                    shutil.copy(os.path.join(tmp, fn), a.keep_logs)
        if code:
            for fn in sorted(os.listdir(tmp)):
                if fn.endswith(".log"):
                    n_lines, tail = keep_last(os.path.join(tmp, fn), 10)
                    if n_lines:
                        print(f"\n{fn}: {n_lines} lines, the last {len(tail)}:")
                        for line in tail:
                            print("    " + line[:300])
        shutil.rmtree(tmp, ignore_errors=True)
    if rows:
        report(rows, a)
    print(f"\nelapsed {time.time() - t_start:.1f}s")
    if a.json and rows:
        with open(a.json, "w") as fh:
            json.dump(
                {
                    "machine": note,
                    "calibration": {"round_trips_per_s": rt, "p50_us": c50, "p99_us": c99},
                    "busy_before_start_pct": busy0,
                    "args": {k: v for k, v in vars(a).items() if k != "json"},
                    "rows": rows,
                },
                fh,
                indent=1,
                default=str,
            )
        print(f"figures written to {a.json}")
    return code


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "csms":
        csms_main(sys.argv[2:])
    elif role == "chargers":
        chargers_main()
    else:
        sys.exit(main())
