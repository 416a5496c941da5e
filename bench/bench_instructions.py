#!/usr/bin/env python3
"""Instructions per offline message: the controller's CPU cost counted, not timed.

The machines this project is measured on are shared: their speed moves by half within
an hour, so a change of a few percent in CPU per message cannot be seen in timed runs.
This counts instead: the controller runs under valgrind's callgrind (instrumentation
off while it starts and the chargers connect), N chargers send MeterValues while its
uplink is down, and the instructions its threads executed are divided by the messages
stored and answered. The same code and the same inputs give the same count within
about 1 %, whatever else the machine is doing, so two commits are compared by running
this on each.

Two phases, each with instrumentation on only for it:

``paced``
    ``--rate`` messages/s spread over the chargers (one in flight each): the cost of a
    message that arrives alone, as at a site's usual rate (under valgrind the
    controller answers about 140 messages/s, so keep the rate well below that).
``sat``
    closed loop: each charger sends its next message as soon as it is answered; under
    valgrind's slowdown this makes group commits of about N messages: the cost of a
    message in a busy period.

Printed per phase: messages, instructions per message on the event loop thread and on
the other threads (the store's writer thread, mostly), and the total. With
``--annotate``, the functions of the event loop thread that cost the most, inclusive
(``callgrind_annotate``), for the sat phase.

Needs valgrind (Debian: ``apt-get install valgrind``). About 2 minutes.

Run: .venv/bin/python bench/bench_instructions.py [--chargers 50] [--rate 50] [--window 10]
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_offline import start_controller
from common import ClientCtl, machine_note, print_table, raise_nofile, run_phase, stop_group


def thread_totals(out_dir: str, pid: int) -> dict[int, int]:
    """Instructions per thread (callgrind numbers them from 1, the main thread) in the
    last dump of ``pid``."""
    totals: dict[int, int] = {}
    for path in glob.glob(os.path.join(out_dir, f"cg.{pid}.*-*")):
        thread = int(path.rsplit("-", 1)[1])
        with open(path) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    totals[thread] = int(line.split()[1])
    return totals


def callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def measure(
    client: ClientCtl, pid: int, out_dir: str, mode: str, *, rate: float, window: float
) -> tuple[int, dict[int, int]]:
    """Messages stored and answered in one phase, and the instructions per thread."""
    for path in glob.glob(os.path.join(out_dir, f"cg.{pid}.*")):
        os.unlink(path)
    callgrind_control("--zero", str(pid))
    callgrind_control("--instr=on", str(pid))
    res = run_phase(client, "t", mode, "mvu", {}, rate=rate, warmup=0.0, window=window)
    # what was sent in the window is answered before the count stops
    time.sleep(2.0)
    callgrind_control("--instr=off", str(pid))
    callgrind_control("--dump", str(pid))
    problems = res["mismatched"] + res["callerrors"] + res["closed"] + res["lost"]
    if problems:
        raise RuntimeError(f"{mode}: {problems} calls not answered as expected: {res}")
    return int(res["sent"]), thread_totals(out_dir, pid)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--chargers", type=int, default=50)
    ap.add_argument("--rate", type=float, default=50.0, help="paced phase, messages/s")
    ap.add_argument("--window", type=float, default=10.0, help="seconds per phase")
    ap.add_argument("--annotate", action="store_true", help="top functions of the loop thread")
    a = ap.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench_instructions: valgrind is not installed (apt-get install valgrind)")
        sys.exit(2)
    raise_nofile(4 * a.chargers + 256)
    print(machine_note())
    print(time.strftime("%Y-%m-%d %H:%M:%S"))
    tmp = tempfile.mkdtemp(prefix="lc-instructions-")
    out_dir = os.path.join(tmp, "callgrind")
    os.makedirs(out_dir)
    os.environ["BENCH_CONTROLLER_CMD"] = (
        "valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes"
        f" --callgrind-out-file={out_dir}/cg.%p {{python}} -m proxy serve"
    )
    proc, port, _admin, _db = start_controller(sys.executable, tmp, ready_timeout=300.0)
    client = ClientCtl(os.path.join(tmp, "client.log"))
    rows: list[list[Any]] = []
    annotated = ""
    try:
        r = client.cmd(
            cmd="connect",
            tag="t",
            host="127.0.0.1",
            port=port,
            n=a.chargers,
            path_prefix="/ocpp/BENCH",
            concurrency=10,
            timeout=300.0,
        )
        if not r["ok"]:
            raise RuntimeError(f"connect failed: {r}")
        client.cmd(cmd="exchange", tag="t", size="mvu", timeout=120.0)  # warm
        for name, mode in (("paced", "light"), ("sat", "sat")):
            sent, totals = measure(client, proc.pid, out_dir, mode, rate=a.rate, window=a.window)
            loop_ir = totals.get(1, 0)
            other_ir = sum(v for k, v in totals.items() if k != 1)
            rows.append(
                [
                    name,
                    a.rate if mode == "light" else "-",
                    sent,
                    round(loop_ir / sent),
                    round(other_ir / sent),
                    round((loop_ir + other_ir) / sent),
                ]
            )
            if a.annotate and name == "sat":
                main_file = glob.glob(os.path.join(out_dir, f"cg.{proc.pid}.*-01"))
                if main_file:
                    annotated = subprocess.run(
                        ["callgrind_annotate", "--inclusive=yes", main_file[0]],
                        capture_output=True,
                        text=True,
                        timeout=120,
                        check=False,
                    ).stdout
        client.cmd(cmd="close", tag="t", timeout=120.0)
    finally:
        client.close()
        stop_group(proc, timeout=60.0)
    print_table(
        ["phase", "offered/s", "messages", "loop thread Ir/msg", "other threads Ir/msg", "Ir/msg"],
        rows,
        title=f"Instructions per offline MeterValues, {a.chargers} chargers (callgrind)",
    )
    if annotated:
        print("\nEvent loop thread, sat phase, inclusive (top 70):")
        lines = [ln for ln in annotated.splitlines() if "(" in ln and "%)" in ln]
        for line in lines[:70]:
            short = re.sub(r"\s\[[^]]*\]$", "", line)  # the object file
            print(re.sub(r"/\S*/(Python-3[^/]*|libuv-[^/]*|uvloop)/", "", short)[:160])


if __name__ == "__main__":
    main()
