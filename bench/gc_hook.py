#!/usr/bin/env python3
"""Run a Python program with a garbage-collector probe (for the memory benchmark).

    python bench/gc_hook.py -m proxy serve
    python bench/gc_hook.py bench/naive_proxy.py --port 9001 --upstream ws://...

Every collection the program makes by itself is timed through ``gc.callbacks``. Signals,
handled in the main thread (where the event loop runs, so a collection there stalls the
loop exactly as one the interpreter starts would):

* SIGUSR1: run a full collection (``gc.collect()``) and append ``{"forced_ms": ...}`` to
  the file named by ``$BENCH_GC_OUT`` (if the signal lands inside a collection the
  interpreter is making, the full one runs right after it);
* SIGUSR2: append the collector's state: objects it tracks, objects frozen out of it
  (``gc.freeze``), thresholds, and per generation the collections it made by itself
  since the last SIGUSR2 (count, longest and total pause in ms).

Nothing else is imported, so the program's memory is hardly changed.
"""

from __future__ import annotations

import gc
import json
import os
import runpy
import signal
import sys
import threading
import time
from typing import Any

_OUT = os.environ.get("BENCH_GC_OUT", os.devnull)
_natural: dict[int, list[float]] = {0: [0, 0.0, 0.0], 1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}
_started = [0.0]
_forced = [False]
_in_gc = [False]


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _in_gc[0] = True
        _started[0] = time.perf_counter()
        return
    _in_gc[0] = False
    if _forced[0]:
        return
    ms = (time.perf_counter() - _started[0]) * 1000.0
    s = _natural.setdefault(int(info.get("generation", 0)), [0, 0.0, 0.0])
    s[0] += 1
    s[1] = max(s[1], ms)
    s[2] += ms


def _write(record: dict[str, Any]) -> None:
    record["t"] = time.monotonic()
    with open(_OUT, "a") as f:
        f.write(json.dumps(record) + "\n")


def _on_usr1(signum: int, frame: Any) -> None:
    if _in_gc[0]:
        # The handler runs inside a collection (a finalizer ran Python code), where
        # gc.collect() would return at once: ask again once it is over.
        threading.Timer(0.005, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        return
    _forced[0] = True
    t = time.perf_counter()
    try:
        gc.collect()
    finally:
        _forced[0] = False
    _write({"forced_ms": (time.perf_counter() - t) * 1000.0})


def _on_usr2(signum: int, frame: Any) -> None:
    natural = {str(g): list(v) for g, v in _natural.items()}
    for v in _natural.values():
        v[:] = [0, 0.0, 0.0]
    _write(
        {
            "tracked": len(gc.get_objects()),
            "frozen": gc.get_freeze_count(),
            "threshold": list(gc.get_threshold()),
            "natural": natural,
        }
    )


def main() -> None:
    args = sys.argv[1:]
    if not args:
        sys.exit("usage: gc_hook.py -m MODULE [ARGS] | gc_hook.py SCRIPT [ARGS]")
    gc.callbacks.append(_callback)
    signal.signal(signal.SIGUSR1, _on_usr1)
    signal.signal(signal.SIGUSR2, _on_usr2)
    if args[0] == "-m":
        module = args[1]
        sys.argv = [module, *args[2:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(args)
        sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
        runpy.run_path(args[0], run_name="__main__")


if __name__ == "__main__":
    main()
