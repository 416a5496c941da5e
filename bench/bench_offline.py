#!/usr/bin/env python3
"""Offline store-and-answer: how fast the controller answers transaction messages while
its uplink is down, every one committed (synchronous=FULL) before its answer.

The controller runs as a subprocess pointed at a CSMS that is not there. N chargers
(the lean raw-protocol client of ``common.py``, its own process on uvloop, so that the
load generator costs little and does not share the controller's core) send MeterValues
(about 620 bytes each), one call outstanding per connection as OCPP-J requires, in two
phases per N:

``sat``
    closed loop: every charger sends its next MeterValues as soon as the previous one
    is answered. The controller's capacity; latency is then N / rate by construction.
``paced``
    open loop at a fixed total rate (``--rate``, 10,000/s by default) spread evenly
    over the N chargers: the answer latency (p50, p99) at that rate. Only where the
    rate is reachable with one call outstanding per charger (N >= 100).

Printed per N and phase: stored-and-answered messages per second, answer latency p50
and p99 as the chargers saw it, the same inside the controller (from the call read to
its answer written: the ``ocpp_lc_offline_answer_seconds`` histogram, as bucket upper
bounds; the rest is the socket buffers and the load generator's own delays), the
controller's CPU per message, the store's group-commit latency p99 (from
the controller's /metrics histogram), messages per commit, and ``ref us``: the machine's
speed just before the phase (``common.cpu_reference``: CPU time of a fixed unit of work
shaped like a message's; on a shared machine it moves with the other tenants' load, and
the figures of runs taken at different references are not comparable); at the end, a
check that the outbox holds exactly the messages answered.

Target (issue 3): at least 10,000 stored-and-answered messages per second with p99 answer
latency under 50 ms at 1,000 chargers: the paced phase at N=1000 sustaining 10,000/s
(at least 99 % of the offered rate answered) with p99 < 50 ms.

Run: .venv/bin/python bench/bench_offline.py [--ns 1,100,1000] [--window 4] [--rate 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (
    ClientCtl,
    cpu_reference,
    free_port,
    machine_note,
    poll_http,
    print_table,
    raise_nofile,
    run_phase,
    stop_group,
)

TARGET_RATE = 10_000.0
TARGET_P99_MS = 50.0


COMMIT = "ocpp_lc_store_commit_seconds"
ANSWER = "ocpp_lc_offline_answer_seconds"


def histogram(metrics: str, name: str) -> tuple[list[tuple[float, float]], float]:
    """The cumulative buckets (upper bound, count) and the count of a histogram."""
    buckets: list[tuple[float, float]] = []
    total = 0.0
    for line in metrics.splitlines():
        m = re.match(name + r'_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            buckets.append((le, float(m.group(2))))
        m = re.match(name + r"_count (\S+)", line)
        if m:
            total = float(m.group(1))
    return buckets, total


def quantile_ms(before: str, after: str, name: str, q: float) -> float | None:
    """The ``q`` quantile of what a histogram observed between two scrapes, as the upper
    bound of the bucket it falls in."""
    b0, t0 = histogram(before, name)
    b1, t1 = histogram(after, name)
    total = t1 - t0
    if total <= 0:
        return None
    earlier = dict(b0)
    for le, count in b1:
        if count - earlier.get(le, 0.0) >= q * total:
            return le * 1000.0
    return None


def commit_count(metrics: str) -> float:
    return histogram(metrics, COMMIT)[1]


def scrape(admin: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        text: str = r.read().decode()
    return text


def start_controller(
    python: str, tmp: str, *, ready_timeout: float = 30.0
) -> tuple[subprocess.Popen[bytes], int, int, str]:
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
        OCPP_LC_OFFLINE__MAX_OUTBOX_PER_CHARGER="1000000",
    )
    log = open(os.path.join(tmp, "controller.log"), "wb")  # noqa: SIM115 - child owns it
    cmd = os.environ.get("BENCH_CONTROLLER_CMD", "{python} -m proxy serve").format(python=python)
    proc = subprocess.Popen(cmd.split(), env=env, stdout=log, stderr=log, start_new_session=True)
    log.close()
    poll_http(f"http://127.0.0.1:{admin}/readyz", ready_timeout, lambda: proc.poll() is None)
    return proc, port, admin, db


def run_n(n: int, a: argparse.Namespace, client: ClientCtl) -> list[dict[str, Any]]:
    tmp = tempfile.mkdtemp(prefix="lc-offline-bench-")
    proc, port, admin, db = start_controller(sys.executable, tmp)
    tag = f"n{n}"
    rows: list[dict[str, Any]] = []
    answered = 0
    try:
        r = client.cmd(
            cmd="connect",
            tag=tag,
            host="127.0.0.1",
            port=port,
            n=n,
            path_prefix="/ocpp/BENCH",
            concurrency=50,
            timeout=120.0,
        )
        if not r["ok"]:
            raise RuntimeError(f"connect failed: {r}")
        warm = client.cmd(cmd="exchange", tag=tag, size="mvu", timeout=60.0)
        answered += warm["sent"] - warm["still_busy"]
        phases: list[tuple[str, str, float]] = [("sat", "sat", 0.0)]
        if n >= 100:
            phases.append(("paced", "light", a.rate))
        for name, mode, rate in phases:
            ref = cpu_reference()
            before = scrape(admin)
            res = run_phase(
                client,
                tag,
                mode,
                "mvu",
                {"controller": [proc.pid]},
                rate=rate or 2000.0,
                warmup=0.5,
                window=a.window,
            )
            after = scrape(admin)
            commits = commit_count(after) - commit_count(before)
            answered += res["sent"] - res["still_busy"]
            problems = res["mismatched"] + res["callerrors"] + res["closed"] + res["lost"]
            rows.append(
                {
                    "n": n,
                    "phase": name,
                    "offered": rate or None,
                    "rate": res["rate"],
                    "p50_ms": res["p50_us"] / 1000,
                    "p99_ms": res["p99_us"] / 1000,
                    "cpu_us_per_msg": res["cpu_us_per_call"]["controller"],
                    "controller_cpu_pct": res["cpu_pct"]["controller"],
                    "other_pct": res["other_pct"],
                    "commit_p99_ms": quantile_ms(before, after, COMMIT, 0.99),
                    "ctrl_p50_ms": quantile_ms(before, after, ANSWER, 0.50),
                    "ctrl_p99_ms": quantile_ms(before, after, ANSWER, 0.99),
                    "msgs_per_commit": (res["sent"] / commits) if commits else None,
                    "problems": problems,
                    "ref_us": ref,
                }
            )
        client.cmd(cmd="close", tag=tag, timeout=30.0)
    finally:
        stop_group(proc, timeout=10.0)
    with sqlite3.connect(db) as con:
        stored = con.execute("SELECT COUNT(*) FROM outbox WHERE action = 'MeterValues'").fetchone()
    for row in rows:
        row["answered_total"] = answered
        row["stored_total"] = stored[0]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ns", default="1,100,1000")
    ap.add_argument("--window", type=float, default=4.0)
    ap.add_argument("--rate", type=float, default=TARGET_RATE, help="paced phase, messages/s")
    ap.add_argument("--json")
    a = ap.parse_args()
    ns = [int(x) for x in a.ns.split(",")]
    raise_nofile(4 * max(ns) + 256)
    print(machine_note())
    print(time.strftime("%Y-%m-%d %H:%M:%S"))
    client = ClientCtl(os.path.join(tempfile.mkdtemp(prefix="lc-offline-client-"), "c.log"))
    rows: list[dict[str, Any]] = []
    try:
        for n in ns:
            rows.extend(run_n(n, a, client))
    finally:
        client.close()
    print_table(
        [
            "N",
            "phase",
            "offered/s",
            "stored+answered/s",
            "p50 ms",
            "p99 ms",
            "ctrl p50 <=",
            "ctrl p99 <=",
            "ctrl CPU us/msg",
            "ctrl CPU %",
            "other %",
            "commit p99 ms <=",
            "msgs/commit",
            "problems",
            "ref us",
        ],
        [
            [
                r["n"],
                r["phase"],
                r["offered"] or "-",
                r["rate"],
                r["p50_ms"],
                r["p99_ms"],
                r["ctrl_p50_ms"] if r["ctrl_p50_ms"] is not None else "n/a",
                r["ctrl_p99_ms"] if r["ctrl_p99_ms"] is not None else "n/a",
                r["cpu_us_per_msg"],
                r["controller_cpu_pct"],
                r["other_pct"],
                r["commit_p99_ms"] if r["commit_p99_ms"] is not None else "n/a",
                r["msgs_per_commit"] if r["msgs_per_commit"] is not None else "n/a",
                r["problems"],
                r["ref_us"],
            ]
            for r in rows
        ],
        title="Offline store-and-answer (MeterValues, synchronous=FULL, group commit)",
    )
    seen = set()
    for r in rows:
        if r["n"] in seen:
            continue
        seen.add(r["n"])
        same = r["answered_total"] == r["stored_total"]
        print(
            f"N={r['n']}: answered {r['answered_total']}, stored {r['stored_total']}:"
            f" {'OK' if same else 'MISMATCH'}"
        )
    big = [r for r in rows if r["phase"] == "paced" and r["n"] == max(ns)]
    if big:
        p = big[0]
        ok = (
            p["offered"] >= TARGET_RATE
            and p["rate"] >= 0.99 * p["offered"]
            and p["p99_ms"] < TARGET_P99_MS
            and p["problems"] == 0
        )
        print(
            f"target at N={p['n']}: >= {TARGET_RATE:,.0f}/s stored and answered with p99 <"
            f" {TARGET_P99_MS:.0f} ms: {'PASS' if ok else 'FAIL'} ({p['rate']:,.0f}/s of"
            f" {p['offered']:,.0f} offered, p99 {p['p99_ms']:.1f} ms)"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
