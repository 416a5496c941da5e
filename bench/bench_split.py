#!/usr/bin/env python3
"""What spreading the chargers over several controller processes would give here.

The controller serves every charger on one event loop thread; the question whether a
design with the charger connections split over several processes would meet the offline
target on this machine is answered by its upper bound: K independent controllers (each
its own store, no site-wide state shared), the chargers split evenly between them, the
same paced load as ``bench_offline.py``'s target phase. Runs alternate one controller
and K controllers, so that each pair sees the same state of the shared machine.

Printed per run: controllers, stored-and-answered messages per second, the worst p50
and p99 among the controllers' chargers, the controllers' CPU per message, the
machine's speed (``ref us``, see ``common.cpu_reference``). With ``--hog`` a process
spins on one core during the measurement (another tenant's load).

Run: .venv/bin/python bench/bench_split.py [--processes 2] [--pairs 3] [--hog]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_offline import TARGET_P99_MS, start_controller
from common import (
    ClientCtl,
    cpu_ns,
    cpu_reference,
    machine_note,
    print_table,
    raise_nofile,
    stop_group,
)


def run(client: ClientCtl, k: int, a: argparse.Namespace) -> dict[str, Any]:
    """One paced window with the chargers split over ``k`` controllers."""
    procs: list[subprocess.Popen[bytes]] = []
    tags: list[str] = []
    per = a.chargers // k
    hog: subprocess.Popen[bytes] | None = None
    try:
        for i in range(k):
            proc, port, _admin, _db = start_controller(
                sys.executable, tempfile.mkdtemp(prefix="lc-split-bench-")
            )
            procs.append(proc)
            tag = f"k{k}-{i}-{time.monotonic_ns()}"
            r = client.cmd(
                cmd="connect",
                tag=tag,
                host="127.0.0.1",
                port=port,
                n=per,
                path_prefix=f"/ocpp/SPLIT{i}X",
                concurrency=50,
                timeout=120.0,
            )
            if not r["ok"]:
                raise RuntimeError(f"connect failed: {r}")
            client.cmd(cmd="exchange", tag=tag, size="mvu", timeout=60.0)
            tags.append(tag)
        ref = cpu_reference()
        if a.hog:
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for tag in tags:
            client.cmd(cmd="start", tag=tag, mode="light", size="mvu", rate=a.rate / k)
        time.sleep(0.5)
        for tag in tags:
            client.cmd(cmd="mark", tag=tag)
        c0 = sum(cpu_ns(p.pid) for p in procs)
        t0 = time.perf_counter()
        time.sleep(a.window)
        c1 = sum(cpu_ns(p.pid) for p in procs)
        t1 = time.perf_counter()
        res = [client.cmd(cmd="stop", tag=tag) for tag in tags]
        for tag in tags:
            client.cmd(cmd="close", tag=tag, timeout=30.0)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
        for proc in procs:
            stop_group(proc, timeout=10.0)
    rate = sum(r["rate"] for r in res)
    return {
        "k": k,
        "rate": rate,
        "p50_ms": max(r["p50_us"] for r in res) / 1000,
        "p99_ms": max(r["p99_us"] for r in res) / 1000,
        "cpu_us_per_msg": (c1 - c0) / 1e3 / (t1 - t0) / rate if rate else float("nan"),
        "problems": sum(r["mismatched"] + r["callerrors"] + r["closed"] + r["lost"] for r in res),
        "ref_us": ref,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--chargers", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=10_000.0, help="messages/s in all")
    ap.add_argument("--window", type=float, default=6.0)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--hog", action="store_true", help="a process spinning on one core")
    a = ap.parse_args()
    raise_nofile(4 * a.chargers + 256)
    print(machine_note())
    print(time.strftime("%Y-%m-%d %H:%M:%S"))
    client = ClientCtl(os.path.join(tempfile.mkdtemp(prefix="lc-split-client-"), "c.log"))
    rows: list[dict[str, Any]] = []
    try:
        for _ in range(a.pairs):
            rows.append(run(client, 1, a))
            rows.append(run(client, a.processes, a))
    finally:
        client.close()
    print_table(
        [
            "controllers",
            "stored+answered/s",
            "p50 ms",
            "p99 ms",
            "CPU us/msg",
            "problems",
            "ref us",
        ],
        [
            [
                r["k"],
                r["rate"],
                r["p50_ms"],
                r["p99_ms"],
                r["cpu_us_per_msg"],
                r["problems"],
                r["ref_us"],
            ]
            for r in rows
        ],
        title=(
            f"{a.chargers} chargers paced at {a.rate:,.0f} MeterValues/s, one controller or"
            f" {a.processes}{' (a CPU hog beside them)' if a.hog else ''}"
        ),
    )
    for k in (1, a.processes):
        passed = sum(
            1
            for r in rows
            if r["k"] == k and r["rate"] >= 0.99 * a.rate and r["p99_ms"] < TARGET_P99_MS
        )
        runs = sum(1 for r in rows if r["k"] == k)
        print(f"{k} controller(s): p99 < {TARGET_P99_MS:.0f} ms at the rate in {passed} of {runs}")


if __name__ == "__main__":
    main()
