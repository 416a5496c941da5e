#!/usr/bin/env python3
"""Shared pieces of the pass-through benchmarks (stdlib + websockets + uvloop).

Process roles, each started as its own process with ``python bench/common.py ROLE``:

``server``
    CSMS stand-in: a websockets (asyncio) server on 127.0.0.1 that selects the
    ``ocpp1.6`` subprotocol and answers every OCPP CALL ``[2,id,action,{...}]``
    with a CALLRESULT ``[3,id,{...}]`` (json.loads + json.dumps per message,
    compression off). It answers ``stats`` lines on stdin with its counters, so
    the orchestrator can check that every CALL sent by a charger reached it.
``client``
    Lean load generator: a raw ``asyncio.Protocol`` on uvloop with hand-built
    WebSocket frames (zero mask key, so masking costs nothing), one CALL
    outstanding per connection as OCPP requires, subprotocol ``ocpp1.6``
    offered. It is driven by JSON lines on stdin/stdout, so the orchestrator
    can keep connections open across phases and read the CPU counters of every
    process around each window.

The orchestration helpers (processes, CPU accounting from /proc, one
measurement window, calibration, tables) are imported by ``bench_passthrough.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import queue
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable

# --------------------------------------------------------------------------
# OCPP 1.6J payloads
# --------------------------------------------------------------------------
HB_PAYLOAD = "{}"
# A realistic MeterValues with 5 sampled values; the whole CALL frame is about 620 bytes.
MV_PAYLOAD = json.dumps(
    {
        "connectorId": 1,
        "transactionId": 1234567,
        "meterValue": [
            {
                "timestamp": "2024-05-01T12:00:00.000Z",
                "sampledValue": [
                    {
                        "value": "12345.6",
                        "context": "Sample.Periodic",
                        "measurand": "Energy.Active.Import.Register",
                        "unit": "Wh",
                    },
                    {
                        "value": "7200.0",
                        "context": "Sample.Periodic",
                        "measurand": "Power.Active.Import",
                        "unit": "W",
                    },
                    {
                        "value": "31.2",
                        "context": "Sample.Periodic",
                        "measurand": "Current.Import",
                        "phase": "L1",
                        "unit": "A",
                    },
                    {
                        "value": "230.1",
                        "context": "Sample.Periodic",
                        "measurand": "Voltage",
                        "phase": "L1-N",
                        "unit": "V",
                    },
                    {
                        "value": "55",
                        "context": "Sample.Periodic",
                        "measurand": "SoC",
                        "location": "EV",
                        "unit": "Percent",
                    },
                ],
            }
        ],
    },
    separators=(",", ":"),
)
BOOT_PAYLOAD = json.dumps(
    {
        "chargePointVendor": "VendorX",
        "chargePointModel": "ModelY",
        "chargePointSerialNumber": "SN-000001",
        "firmwareVersion": "1.2.3",
    },
    separators=(",", ":"),
)
#: The same MeterValues with the message id as its energy reading, so that no two of a
#: charger's messages are equal (a store that recognises a resent message by its content
#: keeps every one): ``@UID@`` is replaced per message.
MV_UNIQUE_PAYLOAD = MV_PAYLOAD.replace('"value":"12345.6"', '"value":"@UID@"', 1)
SIZES: dict[str, tuple[str, str]] = {
    "hb": ("Heartbeat", HB_PAYLOAD),
    "mv": ("MeterValues", MV_PAYLOAD),
    "mvu": ("MeterValues", MV_UNIQUE_PAYLOAD),
    "boot": ("BootNotification", BOOT_PAYLOAD),
}
SIZE_NAMES = {
    "hb": "Heartbeat",
    "mv": "MeterValues",
    "mvu": "MeterValues (unique)",
    "boot": "BootNotification",
}
RESPONSES: dict[str, dict[str, Any]] = {
    "Heartbeat": {"currentTime": "2024-05-01T12:00:00.000Z"},
    "BootNotification": {
        "currentTime": "2024-05-01T12:00:00.000Z",
        "interval": 300,
        "status": "Accepted",
    },
}
SUBPROTOCOLS = ["ocpp1.6", "ocpp2.0.1"]


def call_frame_text(size: str, uid: str = "1234567") -> str:
    action, payload = SIZES[size]
    return f'[2,"{uid}","{action}",{payload}]'


# --------------------------------------------------------------------------
# server role (CSMS stand-in)
# --------------------------------------------------------------------------
def server_main(argv: Sequence[str]) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args(argv)
    loads, dumps = json.loads, json.dumps
    resp = RESPONSES
    # counters: calls answered, connections opened, open now, non-CALL frames,
    # connections whose path is not /<identity>, offers of permessage-deflate
    st = {"calls": 0, "conns": 0, "open": 0, "other_frames": 0, "bad_path": 0, "deflate_offers": 0}
    subprotocols: dict[str, int] = {}
    last_path = [""]

    async def handler(ws: ServerConnection) -> None:
        st["conns"] += 1
        st["open"] += 1
        req = ws.request
        if req is not None:
            path = req.path
            last_path[0] = path
            if not (path.startswith("/CP") and "/" not in path[1:]):
                st["bad_path"] += 1
            if "deflate" in (req.headers.get("Sec-WebSocket-Extensions") or ""):
                st["deflate_offers"] += 1
        sp = str(ws.subprotocol)
        subprotocols[sp] = subprotocols.get(sp, 0) + 1
        try:
            async for msg in ws:
                m = loads(msg)
                if m[0] == 2:
                    st["calls"] += 1
                    await ws.send(dumps([3, m[1], resp.get(m[2], {})], separators=(",", ":")))
                else:
                    st["other_frames"] += 1
        except ConnectionClosed:
            pass
        finally:
            st["open"] -= 1

    async def control() -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                return
            out = dict(st, subprotocols=subprotocols, last_path=last_path[0])
            sys.stdout.write(json.dumps(out) + "\n")
            sys.stdout.flush()

    async def main() -> None:
        async with serve(
            handler,
            "127.0.0.1",
            a.port,
            subprotocols=SUBPROTOCOLS,  # type: ignore[arg-type]
            compression=None,
            backlog=4096,
        ):
            print("READY", flush=True)
            await control()  # stdin closed: the orchestrator is gone

    asyncio.run(main())


# --------------------------------------------------------------------------
# client role (load generator)
# --------------------------------------------------------------------------
class Group:
    """The connections to one target, plus the current load phase and its counters."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.conns: list[Conn] = []
        self.mode = "stop"  # stop | sat | light
        self.prefix = b""
        self.suffix = b""
        self.suffix2 = b""  # when set: prefix + uid + suffix + uid + suffix2
        self.interval = 0.0
        self.recording = False
        self.lat: list[int] = []
        self.count = 0
        self.busy = 0
        self.drain: asyncio.Future[bool] | None = None
        self.gen = 0  # phase generation: stale light timers are ignored
        self.reset_phase()

    def reset_phase(self) -> None:
        self.sent = 0  # CALLs sent since the phase started
        self.errors = 0  # answers that did not match the outstanding CALL
        self.callerrors = 0  # CALLERROR [4,...] answers to our CALLs
        self.incoming = 0  # CALLs received from the other side (answered with {})
        self.closed = 0  # connections closed by the other side
        self.lost = 0  # CALLs outstanding when their connection closed

    def check_drain(self) -> None:
        if self.busy == 0 and self.drain is not None and not self.drain.done():
            self.drain.set_result(True)


def ws_frame(opcode_byte: int, body: bytes) -> bytes:
    """A masked client frame; the zero masking key leaves the payload unchanged."""
    n = len(body)
    if n < 126:
        hdr = bytes((opcode_byte, 0x80 | n))
    elif n < 65536:
        hdr = bytes((opcode_byte, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        hdr = bytes((opcode_byte, 0x80 | 127)) + n.to_bytes(8, "big")
    return hdr + b"\0\0\0\0" + body


class Conn(asyncio.Protocol):
    def __init__(self, group: Group, host: str, port: int, path: str) -> None:
        self.g = group
        self.host = host
        self.port = port
        self.path = path
        self.buf = bytearray()
        self.open = False
        self.closed = False
        self.ready: asyncio.Future[bool] = group.loop.create_future()
        self.uid = 0
        self.uid_b = b""
        self.expect = b""
        self.waiting = False
        self.t_sent = 0
        self.next_at = 0.0
        self.tr: asyncio.Transport | None = None
        self.close_sent = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tr = transport  # type: ignore[assignment] # uvloop's TCPTransport
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
        g = self.g
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before handshake"))
            return
        if not self.close_sent:
            g.closed += 1
        if self.waiting:
            self.waiting = False
            g.busy -= 1
            g.lost += 1
            g.check_drain()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.open:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(buf[:i])
            del buf[: i + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(head[:120].decode(errors="replace")))
                assert self.tr is not None
                self.tr.close()
                return
            if b"ocpp1.6" not in head.lower():
                self.ready.set_exception(ConnectionError("no ocpp1.6 subprotocol in the answer"))
                assert self.tr is not None
                self.tr.close()
                return
            self.open = True
            self.ready.set_result(True)
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
                self.on_message(payload)
            elif op == 9 and self.tr is not None:  # ping -> pong
                self.tr.write(ws_frame(0x8A, payload))
            elif op == 8 and self.tr is not None:
                if not self.close_sent:
                    self.close_sent = True
                    self.g.closed += 1
                    self.tr.write(ws_frame(0x88, payload[:2]))
                self.tr.close()
                return

    def on_message(self, payload: bytes) -> None:
        now = time.perf_counter_ns()
        g = self.g
        if not (self.waiting and payload.startswith(self.expect)) and not self.slow_path(payload):
            return
        self.waiting = False
        g.busy -= 1
        if g.recording:
            g.lat.append(now - self.t_sent)
            g.count += 1
        mode = g.mode
        if mode == "sat":
            self.send_call()
        elif mode == "light":
            self.schedule_light()
        else:
            g.check_drain()

    def slow_path(self, payload: bytes) -> bool:
        """A frame that is not the compact CALLRESULT expected: True if it answers our CALL."""
        g = self.g
        try:
            m = json.loads(payload)
            kind, uid = m[0], m[1]
        except (ValueError, TypeError, IndexError, KeyError):
            g.errors += 1
            return False
        if kind == 2:  # a CALL from the other side: answer it, keep waiting for ours
            g.incoming += 1
            if self.tr is not None and not self.closed:
                body = json.dumps([3, uid, {}], separators=(",", ":")).encode()
                self.tr.write(ws_frame(0x81, body))
            return False
        if not self.waiting or uid != self.uid_b.decode():
            g.errors += 1
            return False
        if kind == 4:
            g.callerrors += 1
        elif kind != 3:
            g.errors += 1
        return True

    def schedule_light(self) -> None:
        loop = self.g.loop
        self.next_at += self.g.interval
        now = loop.time()
        self.next_at = max(self.next_at, now)
        loop.call_at(self.next_at, self.light_tick, self.g.gen)

    def light_tick(self, gen: int) -> None:
        g = self.g
        if g.mode == "light" and gen == g.gen and not self.closed and not self.waiting:
            self.send_call()

    def send_call(self) -> None:
        if self.closed or self.tr is None:
            return
        g = self.g
        self.uid += 1
        uid = b"%d" % self.uid
        self.uid_b = uid
        self.expect = b'[3,"' + uid + b'",'
        g.busy += 1
        g.sent += 1
        self.waiting = True
        self.t_sent = time.perf_counter_ns()
        if g.suffix2:
            self.tr.write(ws_frame(0x81, g.prefix + uid + g.suffix + uid + g.suffix2))
        else:
            self.tr.write(ws_frame(0x81, g.prefix + uid + g.suffix))


def pct(sorted_vals: Sequence[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, round(p * (len(sorted_vals) - 1))))
    return float(sorted_vals[i])


async def open_conns(
    g: Group, host: str, port: int, paths: list[str], concurrency: int
) -> list[Conn | BaseException]:
    """Open one connection per path (at most `concurrency` handshakes at a time)."""
    loop = g.loop
    sem = asyncio.Semaphore(concurrency)

    async def one(path: str) -> Conn:
        async with sem:
            _, proto = await loop.create_connection(lambda: Conn(g, host, port, path), host, port)
            await asyncio.wait_for(proto.ready, 30)
            return proto

    return await asyncio.gather(*(one(p) for p in paths), return_exceptions=True)


async def client_async() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    groups: dict[str, Group] = {}
    t_mark = 0.0

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def set_message(g: Group, size: str) -> None:
        action, payload = SIZES[size]
        g.prefix = b'[2,"'
        g.suffix = f'","{action}",{payload}]'.encode()
        g.suffix2 = b""
        if b"@UID@" in g.suffix:
            g.suffix, g.suffix2 = g.suffix.split(b"@UID@", 1)

    async def wait_drain(g: Group, timeout: float) -> None:
        if g.busy > 0:
            g.drain = loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(g.drain, timeout)
            g.drain = None

    def counters(g: Group) -> dict[str, Any]:
        return {
            "sent": g.sent,
            "mismatched": g.errors,
            "callerrors": g.callerrors,
            "incoming_calls": g.incoming,
            "closed": g.closed,
            "lost": g.lost,
            "still_busy": g.busy,
            "live": sum(1 for x in g.conns if not x.closed),
        }

    while True:
        line = await reader.readline()
        if not line:
            return
        c = json.loads(line)
        cmd = c["cmd"]
        try:
            if cmd == "connect":
                g = groups.setdefault(c["tag"], Group(loop))
                t0 = time.perf_counter()
                res = await open_conns(
                    g,
                    c["host"],
                    c["port"],
                    [
                        "{}{:04d}".format(c.get("path_prefix", "/CP"), c.get("id_start", 1) + i)
                        for i in range(c["n"])
                    ],
                    c.get("concurrency", 100),
                )
                ok = [r for r in res if isinstance(r, Conn)]
                bad = [repr(r) for r in res if not isinstance(r, Conn)]
                g.conns.extend(ok)
                reply(
                    {
                        "ok": not bad,
                        "connected": len(g.conns),
                        "failed": len(bad),
                        "first_error": bad[0] if bad else None,
                        "secs": time.perf_counter() - t0,
                    }
                )
            elif cmd == "start":
                g = groups[c["tag"]]
                set_message(g, c["size"])
                g.recording = False
                g.lat = []
                g.count = 0
                g.reset_phase()
                g.gen += 1
                g.mode = c["mode"]
                live = [x for x in g.conns if not x.closed]
                if g.mode == "sat":
                    for x in live:
                        x.send_call()
                else:
                    g.interval = len(live) / float(c["rate"]) if live else 1.0
                    now = loop.time()
                    for x in live:
                        x.next_at = now + random.random() * g.interval
                        loop.call_at(x.next_at, x.light_tick, g.gen)
                reply({"ok": True})
            elif cmd == "mark":
                g = groups[c["tag"]]
                g.lat = []
                g.count = 0
                g.recording = True
                t_mark = time.perf_counter()
                reply({"ok": True})
            elif cmd == "stop":
                g = groups[c["tag"]]
                t_stop = time.perf_counter()
                g.recording = False
                g.mode = "stop"
                lat = sorted(g.lat)
                count = g.count
                g.lat = []
                await wait_drain(g, 5.0)
                secs = t_stop - t_mark
                reply(
                    {
                        "ok": True,
                        "count": count,
                        "secs": secs,
                        "rate": count / secs if secs > 0 else 0.0,
                        "p50_us": pct(lat, 0.50) / 1e3,
                        "p90_us": pct(lat, 0.90) / 1e3,
                        "p99_us": pct(lat, 0.99) / 1e3,
                        "max_us": (lat[-1] / 1e3) if lat else float("nan"),
                        **counters(g),
                    }
                )
            elif cmd == "exchange":
                # every live connection sends one CALL and waits for its answer
                g = groups[c["tag"]]
                set_message(g, c["size"])
                g.mode = "stop"
                g.reset_phase()
                for x in [x for x in g.conns if not x.closed]:
                    x.send_call()
                await wait_drain(g, 30.0)
                reply({"ok": g.busy == 0, **counters(g)})
            elif cmd == "close":
                # clean WebSocket close (1000) of every connection, abort what is left after 2 s
                g_opt = groups.pop(c["tag"], None)
                if g_opt is not None:
                    g_opt.mode = "stop"
                    for x in g_opt.conns:
                        if x.tr is not None and not x.closed:
                            x.close_sent = True
                            x.tr.write(ws_frame(0x88, (1000).to_bytes(2, "big")))
                    t_end = time.perf_counter() + 2.0
                    while time.perf_counter() < t_end and not all(x.closed for x in g_opt.conns):
                        await asyncio.sleep(0.02)
                    left = [x for x in g_opt.conns if not x.closed]
                    for x in left:
                        if x.tr is not None:
                            x.tr.abort()
                    reply({"ok": True, "aborted": len(left)})
                else:
                    reply({"ok": True, "aborted": 0})
            elif cmd == "quit":
                reply({"ok": True})
                return
            else:
                reply({"ok": False, "error": "unknown cmd"})
        except Exception as e:  # report, keep serving
            reply({"ok": False, "error": repr(e)})


def client_main(argv: Sequence[str]) -> None:
    import uvloop

    uvloop.run(client_async())


# --------------------------------------------------------------------------
# orchestration helpers
# --------------------------------------------------------------------------
def raise_nofile(need: int) -> tuple[int, int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = soft
    if soft < need:
        target = hard if hard == resource.RLIM_INFINITY else min(max(need, soft), hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return soft, target, hard


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = int(s.getsockname()[1])
    s.close()
    return p


def _pdeathsig_setter() -> Callable[[], None] | None:
    """A preexec_fn that makes a child get SIGTERM when the benchmark process dies.

    prctl is looked up here, in the parent, so that the child only makes one C call
    between fork and exec (Linux only; None elsewhere).
    """
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_pdeathsig() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return set_pdeathsig


DIE_WITH_PARENT = _pdeathsig_setter()


class LineProc:
    """A child process spoken to in JSON lines (stdin/stdout), every read bounded in time.

    It runs in its own process group, so stopping it also stops anything it started.
    """

    def __init__(
        self,
        args: Sequence[str],
        log_path: str,
        *,
        stdin: bool = True,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        stdout_to_log: bool = False,
    ) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(
            self.args,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=self.log if stdout_to_log else subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=DIE_WITH_PARENT,  # noqa: PLW1509 - one C call, see above
        )
        self.pid = self.p.pid
        self.lines: queue.Queue[str | None] = queue.Queue()
        if not stdout_to_log:
            threading.Thread(target=self._read, daemon=True).start()

    def alive(self) -> bool:
        return self.p.poll() is None

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def readline(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no answer within {timeout:.0f}s from {self.args[1:3]}") from None
        if line is None:
            raise RuntimeError(f"process exited (code {self.p.poll()}): {self.args[1:3]}")
        return line

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no READY within {timeout:.0f}s from {self.args}")
            if self.readline(left).strip() == "READY":
                return

    def send(self, obj: dict[str, Any] | str, timeout: float = 30.0) -> dict[str, Any]:
        assert self.p.stdin is not None
        self.p.stdin.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
        self.p.stdin.flush()
        r: dict[str, Any] = json.loads(self.readline(timeout))
        return r

    def stop(self) -> None:
        stop_group(self.p)
        with contextlib.suppress(OSError):
            self.log.close()


def stop_group(p: subprocess.Popen[Any] | None, timeout: float = 5.0) -> None:
    """SIGTERM to the process group of p (started with start_new_session), then SIGKILL."""
    if p is None:
        return
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout)
    # anything left in the group (children of p), or p itself
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout)
    for f in (p.stdin, p.stdout):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


class ServerCtl(LineProc):
    """The CSMS stand-in."""

    def __init__(self, port: int, log_path: str) -> None:
        super().__init__(
            [PY, os.path.join(HERE, "common.py"), "server", "--port", str(port)], log_path
        )
        self.port = port
        self.wait_ready()

    def stats(self) -> dict[str, Any]:
        return self.send("stats", timeout=10.0)


class ClientCtl(LineProc):
    """The load generator."""

    def __init__(self, log_path: str) -> None:
        super().__init__([PY, os.path.join(HERE, "common.py"), "client"], log_path)

    def cmd(self, timeout: float = 30.0, **kw: Any) -> dict[str, Any]:
        r = self.send(kw, timeout=timeout)
        if not r.get("ok", False) and kw["cmd"] not in ("connect", "exchange"):
            raise RuntimeError(f"client error on {kw!r}: {r!r}")
        return r

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cmd(cmd="quit", timeout=5.0)
        self.stop()


def cpu_ns(pid: int) -> int:
    """CPU time (ns) consumed so far by all threads of pid (schedstat, ns resolution)."""
    tot = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                tot += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return tot


def descendants(pid: int) -> list[int]:
    """pid and all its live descendants."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
                parent[int(d)] = int(s[s.rindex(")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [pid], [pid]
    while todo:
        cur = todo.pop()
        kids = [c for c, pp in parent.items() if pp == cur]
        out += kids
        todo += kids
    return out


def sys_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs; busy = user+nice+system+irq+softirq+steal."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
    return busy, sum(v[:8])


def run_phase(
    client: ClientCtl,
    tag: str,
    mode: str,
    size: str,
    pids: dict[str, list[int]],
    *,
    server: ServerCtl | None = None,
    rate: float = 2000.0,
    warmup: float = 0.15,
    window: float = 0.5,
) -> dict[str, Any]:
    """One measurement window on the connections of `tag`.

    pids: {process name: [pid, ...]} whose CPU is accounted. Also reports
    ``other_pct``: CPU used by the rest of the machine during the window (% of one
    core), and, when `server` is given, ``forwarded``: CALLs the CSMS stand-in
    answered during the whole phase (to compare with ``sent``).
    """
    s0 = server.stats()["calls"] if server is not None else 0
    client.cmd(cmd="start", tag=tag, mode=mode, size=size, rate=rate)
    time.sleep(warmup)
    client.cmd(cmd="mark", tag=tag)
    c0 = {k: sum(cpu_ns(p) for p in v) for k, v in pids.items()}
    j0 = sys_jiffies()
    t0 = time.perf_counter()
    time.sleep(window)
    c1 = {k: sum(cpu_ns(p) for p in v) for k, v in pids.items()}
    j1 = sys_jiffies()
    t1 = time.perf_counter()
    r = client.cmd(cmd="stop", tag=tag)
    if server is not None:
        r["forwarded"] = server.stats()["calls"] - s0
    dt = t1 - t0
    r["cpu_pct"] = {k: 100.0 * (c1[k] - c0[k]) / 1e9 / dt for k in pids}
    ncpu = os.cpu_count() or 1
    busy_pct = 100.0 * ncpu * (j1[0] - j0[0]) / max(1, j1[1] - j0[1])
    r["other_pct"] = max(0.0, busy_pct - sum(r["cpu_pct"].values()))
    rate_ = r["rate"]
    r["cpu_us_per_call"] = {
        k: ((c1[k] - c0[k]) / 1e3 / dt) / rate_ if rate_ else float("nan") for k in pids
    }
    return r


def med(xs: Sequence[float]) -> float:
    ys = [x for x in xs if not math.isnan(x)]
    return float(statistics.median(ys)) if ys else float("nan")


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return str(v)


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None
) -> None:
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if title:
        print("\n" + title)
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def calibrate_loopback(secs: float = 1.0) -> tuple[float, float, float]:
    """Machine calibration: RTT of a 40-byte ping-pong between two processes over
    blocking loopback TCP sockets (no event loop, no WebSocket).

    Returns (round trips/s, p50 us, p99 us). Compare runs on different days with it.
    """
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        try:
            srv.settimeout(10)
            c, _ = srv.accept()
            c.settimeout(10)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                d = c.recv(100)
                if not d:
                    break
                c.sendall(d)
        finally:
            os._exit(0)
    srv.close()
    lat: list[int] = []
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t_end = time.perf_counter() + secs
        while time.perf_counter() < t_end:
            t = time.perf_counter_ns()
            s.sendall(b"x" * 40)
            s.recv(100)
            lat.append(time.perf_counter_ns() - t)
        s.close()
    finally:
        os.waitpid(pid, 0)
    lat.sort()
    return len(lat) / secs, pct(lat, 0.5) / 1e3, pct(lat, 0.99) / 1e3


def cpu_reference(units: int = 4000) -> float:
    """The machine's speed at this moment: CPU time (µs, this process, no waiting
    counted) of one unit of fixed work shaped like the controller's per-message work
    (parse a MeterValues frame, walk it, dump it sorted, digest it).

    On a shared machine the same instructions take more CPU time when other tenants
    load the host; a bench figure is only comparable with another taken at a close
    reference. Lower is faster; the best of three short rounds.
    """
    import hashlib

    import orjson

    frame = ('[2,"1234567","MeterValues",' + MV_PAYLOAD + "]").encode()
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(units):
            msg = orjson.loads(frame)
            payload = msg[3]
            sampled = sum(len(v.get("sampledValue", ())) for v in payload.get("meterValue", ()))
            text = orjson.dumps([payload, sampled], option=orjson.OPT_SORT_KEYS)
            hashlib.blake2b(text, digest_size=12).hexdigest()
        best = min(best, (time.process_time() - t0) / units * 1e6)
    return best


def machine_note() -> str:
    from importlib import metadata

    vers = []
    for pkg in ("websockets", "ocpp", "orjson", "uvloop", "aiosqlite"):
        try:
            vers.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            vers.append(f"{pkg} -")
    try:
        cpus_usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus_usable = os.cpu_count() or 0
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
        mem = f" mem={int(f.readline().split()[1]) / 2**20:.0f}GiB"
    return (
        f"cpus={os.cpu_count()} (usable {cpus_usable}){mem} kernel={os.uname().release} "
        f"python={sys.version.split()[0]} " + ", ".join(vers)
    )


def keep_last(path: str, n: int = 20) -> tuple[int, list[str]]:
    """(number of lines, last n lines) of a log file."""
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0, []
    return len(lines), lines[-n:]


def poll_http(url: str, timeout: float, alive: Callable[[], bool]) -> None:
    """Wait until GET url answers 200, while alive() holds; TimeoutError after `timeout` s."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"process exited before {url} answered 200 (last: {last})")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            last = repr(e)
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f}s (last: {last})")


def wait_port(port: int, timeout: float, alive: Callable[[], bool]) -> None:
    """Wait until 127.0.0.1:port accepts a TCP connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"process exited before it listened on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout:.0f}s")


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "server":
        server_main(sys.argv[2:])
    elif role == "client":
        client_main(sys.argv[2:])
    else:
        sys.exit("usage: common.py server|client ...")
