#!/usr/bin/env python3
"""Offline store-and-answer: how fast the controller answers transaction messages while
its uplink is down, every one committed (synchronous=FULL) before its answer.

The controller runs as a subprocess pointed at a CSMS that is not there. N chargers
(websockets clients in this process, compression off) boot, start a transaction, then
send MeterValues in a closed loop (one call outstanding each, as OCPP-J requires) for a
window. Printed per N: stored-and-answered messages per second, answer latency p50 and
p99, the store's group-commit latency p99 (from the controller's /metrics histogram),
commits per message, and a check that the outbox holds exactly the messages answered.

Target (issue): at least 10,000 messages/s with p99 answer latency under 50 ms at
1,000 chargers.

Run: .venv/bin/python bench/bench_offline.py [--ns 1,100,1000] [--window 5] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import free_port, machine_note, raise_nofile

TARGET_RATE = 10_000.0
TARGET_P99_MS = 50.0


def meter_values(i: int, tx: int, n: int) -> str:
    payload = {
        "connectorId": 1,
        "transactionId": tx,
        "meterValue": [
            {
                "timestamp": "2026-01-01T00:00:00Z",
                "sampledValue": [
                    {"value": str(n * 10), "measurand": "Energy.Active.Import.Register"},
                    {"value": "16.0", "measurand": "Current.Import", "unit": "A"},
                    {"value": "230.1", "measurand": "Voltage", "unit": "V"},
                ],
            }
        ],
    }
    return json.dumps([2, f"m{i}-{n}", "MeterValues", payload])


async def call(ws: ClientConnection, text: str) -> Any:
    await ws.send(text)
    return json.loads(await ws.recv())


async def charger(
    url: str, i: int, start: asyncio.Event, stop: asyncio.Event, lat: list[float]
) -> int:
    async with connect(f"{url}/BENCH{i:05d}", subprotocols=["ocpp1.6"], compression=None) as ws:  # type: ignore[list-item]
        await call(
            ws,
            json.dumps(
                [
                    2,
                    f"b{i}",
                    "BootNotification",
                    {"chargePointVendor": "bench", "chargePointModel": "m"},
                ]
            ),
        )
        answer = await call(
            ws,
            json.dumps(
                [
                    2,
                    f"s{i}",
                    "StartTransaction",
                    {
                        "connectorId": 1,
                        "idTag": f"T{i}",
                        "meterStart": 0,
                        "timestamp": "2026-01-01T00:00:00Z",
                    },
                ]
            ),
        )
        tx = answer[2]["transactionId"]
        await start.wait()
        n = 0
        clock = time.perf_counter
        while not stop.is_set():
            n += 1
            t0 = clock()
            reply = await call(ws, meter_values(i, tx, n))
            lat.append(clock() - t0)
            if reply[0] != 3:
                raise RuntimeError(f"unexpected answer {reply}")
        return n


def commit_p99_ms(metrics: str) -> float | None:
    """p99 of the store commit histogram, by linear scan of its buckets."""
    buckets: list[tuple[float, float]] = []
    total = 0.0
    for line in metrics.splitlines():
        m = re.match(r'ocpp_lc_store_commit_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            buckets.append((le, float(m.group(2))))
        m = re.match(r"ocpp_lc_store_commit_seconds_count (\S+)", line)
        if m:
            total = float(m.group(1))
    if not total:
        return None
    for le, count in buckets:
        if count >= 0.99 * total:
            return le * 1000.0
    return None


def commit_count(metrics: str) -> float:
    m = re.search(r"^ocpp_lc_store_commit_seconds_count (\S+)", metrics, re.M)
    return float(m.group(1)) if m else 0.0


async def run_n(n: int, window: float, python: str) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="lc-offline-bench-")
    port, admin = free_port(), free_port()
    db = os.path.join(tmp, "lc.sqlite3")
    env = dict(
        os.environ,
        OCPP_LC_LISTEN__HOST="127.0.0.1",
        OCPP_LC_LISTEN__PORT=str(port),
        OCPP_LC_LISTEN__COMPRESSION="false",
        OCPP_LC_CSMS__URL="ws://127.0.0.1:1",
        OCPP_LC_UPLINK__RECONNECT_MIN="600",
        OCPP_LC_UPLINK__RECONNECT_MAX="600",
        OCPP_LC_STORE__PATH=db,
        OCPP_LC_ADMIN__HOST="127.0.0.1",
        OCPP_LC_ADMIN__PORT=str(admin),
        OCPP_LC_LOG__LEVEL="WARNING",
        OCPP_LC_ADMISSION__UNKNOWN_IDENTITIES="pass_through",
        OCPP_LC_POLICY__ALLOW_OFFLINE_TX_FOR_UNKNOWN_ID="true",
        OCPP_LC_POLICY__CONCURRENT_TX="false",
    )
    log = open(os.path.join(tmp, "controller.log"), "w")  # noqa: SIM115 - closed below
    cmd = os.environ.get("BENCH_CONTROLLER_CMD", "{python} -m proxy serve").format(python=python)
    proc = subprocess.Popen(cmd.split(), env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("controller did not become ready")
            await asyncio.sleep(0.1)
        url = f"ws://127.0.0.1:{port}/ocpp"
        start, stop = asyncio.Event(), asyncio.Event()
        lat: list[float] = []
        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(charger(url, i, start, stop, lat)))
            if i % 100 == 99:
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0 + n / 500)
        before = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
        t0 = time.perf_counter()
        start.set()
        await asyncio.sleep(window)
        stop.set()
        counts = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    answered = sum(counts)
    with sqlite3.connect(db) as con:
        stored = con.execute("SELECT COUNT(*) FROM outbox WHERE action = 'MeterValues'").fetchone()[
            0
        ]
    lat.sort()
    commits = commit_count(metrics) - commit_count(before)
    return {
        "n": n,
        "answered": answered,
        "stored": stored,
        "rate": answered / elapsed,
        "p50_ms": statistics.median(lat) * 1000 if lat else None,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else None,
        "commit_p99_ms": commit_p99_ms(metrics),
        "msgs_per_commit": answered / commits if commits else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ns", default="1,100,1000")
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--json")
    a = ap.parse_args()
    ns = [int(x) for x in a.ns.split(",")]
    raise_nofile(4 * max(ns) + 256)
    print(machine_note())
    rows = []
    for n in ns:
        row = asyncio.run(run_n(n, a.window, sys.executable))
        rows.append(row)
        print(
            f"N={row['n']:>5}  stored+answered/s={row['rate']:>9.0f}  p50={row['p50_ms']:.2f} ms"
            f"  p99={row['p99_ms']:.2f} ms  commit p99<={row['commit_p99_ms']} ms"
            f"  msgs/commit={row['msgs_per_commit'] and round(row['msgs_per_commit'], 1)}"
            f"  answered={row['answered']} stored={row['stored']}"
            f"  {'OK' if row['answered'] == row['stored'] else 'MISMATCH'}",
            flush=True,
        )
    big = max(rows, key=lambda r: r["n"])
    ok = big["rate"] >= TARGET_RATE and big["p99_ms"] < TARGET_P99_MS
    print(
        f"target at N={big['n']}: >= {TARGET_RATE:.0f}/s and p99 < {TARGET_P99_MS:.0f} ms:"
        f" {'PASS' if ok else 'FAIL'} ({big['rate']:.0f}/s, p99 {big['p99_ms']:.1f} ms)"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
