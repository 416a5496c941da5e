#!/usr/bin/env python3
"""Idle memory per connected charger and garbage-collector pauses: controller vs naive proxy.

For each path (the controller, ``python -m proxy serve``; the naive proxy,
``bench/naive_proxy.py``), with fresh processes, chargers are added step by step up to
each size (default 1, 1,000, 5,000, 10,000). Every charger is one downstream websocket
and one uplink to the CSMS stand-in (``common.py server``), and has exchanged one
BootNotification; then it stays idle. The first charger is a probe. At each size:

* RSS of the proxy (VmRSS from /proc/<pid>/status), its open fds, the stand-in's RSS;
* KiB per charger: the RSS slope between consecutive sizes, and from the first size of
  1,000 or more to the largest;
* the event-loop lag seen by the probe: it sends a Heartbeat every 10 ms through the
  proxy for a --window second idle window (default 10 s); p50 / p99 / max round trip.
  A second probe, straight to the stand-in, runs in the same window, so that a stall
  of the stand-in or of the load generator is told apart from one of the proxy;
* the collector's pauses, from inside the proxy: the proxy runs under
  ``bench/gc_hook.py``, which times every collection the interpreter makes by itself
  (the longest one in the idle window is reported), and on SIGUSR1 runs one full
  collection in the main thread, as the interpreter would, and times it. The probe's
  longest round trip while it runs is reported beside it. Objects tracked by the
  collector (and, for the controller, frozen out of it by gc.freeze()) are counted.

Targets (issue): at most 40 KiB per charger, 10,000 chargers under 1 GiB RSS, no pause
over 50 ms (full collection, collections made by the interpreter, probe lag beyond the
direct probe's).

The controller runs with ``[uplink] max_connects_per_second`` raised (--connect-rate,
default 100,000) so that every uplink opens during its charger's handshake, and
``[listen] max_connections_per_ip = 0`` (every charger comes from 127.0.0.1).
Each process needs about one fd per socket: the proxy 2 x N, so N is capped by the
hard nofile limit when it cannot be raised; the RSS at 10,000 is then extrapolated
from the slope, and said so.

Run: .venv/bin/python bench/bench_memory.py [--quick] [--sizes 1,1000,5000,10000]
         [--window 10] [--paths controller,naive] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_passthrough import wait_quiet
from common import (
    HERE,
    PY,
    ClientCtl,
    LineProc,
    cpu_ns,
    descendants,
    free_port,
    keep_last,
    machine_note,
    poll_http,
    raise_nofile,
    sys_jiffies,
)

REPO = os.path.dirname(HERE)
HOOK = os.path.join(HERE, "gc_hook.py")
TARGET_KIB = 40.0
TARGET_RSS_MIB_AT_10K = 1024.0
TARGET_PAUSE_MS = 50.0
PATHS = ("controller", "naive")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def scrape(admin_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[k] = float(v)
    return out


class GcFile:
    """The JSON lines gc_hook.py appends for one process."""

    def __init__(self, path: str, pid: int) -> None:
        self.path = path
        self.pid = pid
        self.seen = 0

    def ask(self, sig: int, key: str, timeout: float = 10.0) -> dict[str, Any]:
        os.kill(self.pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with open(self.path) as f:
                    lines = f.read().splitlines()
                for i in range(self.seen, len(lines)):
                    rec: dict[str, Any] = json.loads(lines[i])
                    if key in rec:
                        self.seen = i + 1
                        return rec
            time.sleep(0.02)
        raise TimeoutError(f"no {key} from gc_hook within {timeout:.0f}s")


def start_path(
    name: str, tmp: str, a: argparse.Namespace
) -> tuple[LineProc, LineProc, int, int | None, GcFile, GcFile]:
    """The CSMS stand-in and the proxy of `name`, both under gc_hook.py; (server,
    proxy, proxy port, admin port, their gc files)."""
    server_port = free_port()
    s_gc = os.path.join(tmp, f"{name}-server-gc.jsonl")
    server = LineProc(
        [PY, HOOK, os.path.join(HERE, "common.py"), "server", "--port", str(server_port)],
        os.path.join(tmp, f"{name}-server.log"),
        env=dict(os.environ, BENCH_GC_OUT=s_gc),
    )
    server.wait_ready()
    server.port = server_port  # type: ignore[attr-defined]
    port = free_port()
    p_gc = os.path.join(tmp, f"{name}-gc.jsonl")
    upstream = f"ws://127.0.0.1:{server_port}"
    admin: int | None = None
    if name == "controller":
        admin = free_port()
        env = dict(os.environ)
        env.update(
            {
                "OCPP_LC_LISTEN__HOST": "127.0.0.1",
                "OCPP_LC_LISTEN__PORT": str(port),
                "OCPP_LC_LISTEN__COMPRESSION": "false",
                "OCPP_LC_LISTEN__MAX_CONNECTIONS_PER_IP": "0",
                "OCPP_LC_CSMS__URL": upstream,
                "OCPP_LC_STORE__PATH": os.path.join(tmp, "lc.sqlite3"),
                "OCPP_LC_ADMIN__HOST": "127.0.0.1",
                "OCPP_LC_ADMIN__PORT": str(admin),
                "OCPP_LC_LOG__LEVEL": "WARNING",
                "OCPP_LC_ADMISSION__UNKNOWN_IDENTITIES": "pass_through",
                "OCPP_LC_UPLINK__MAX_CONNECTS_PER_SECOND": str(a.connect_rate),
                # a freeze in every idle window (the default, 30 s, does the same 30 s
                # after a wave of connections)
                "OCPP_LC_RUNTIME__GC_FREEZE_INTERVAL": "5",
                "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "BENCH_GC_OUT": p_gc,
            }
        )
        proxy = LineProc(
            [PY, HOOK, "-m", "proxy", "serve"],
            os.path.join(tmp, "controller.log"),
            stdin=False,
            env=env,
            cwd=REPO,
            stdout_to_log=True,
        )
        poll_http(f"http://127.0.0.1:{admin}/readyz", 20.0, proxy.alive)
    else:
        proxy = LineProc(
            [
                PY,
                HOOK,
                os.path.join(HERE, "naive_proxy.py"),
                "--port",
                str(port),
                "--upstream",
                upstream,
            ],
            os.path.join(tmp, "naive.log"),
            stdin=False,
            env=dict(os.environ, BENCH_GC_OUT=p_gc),
        )
        proxy.wait_ready()
    return server, proxy, port, admin, GcFile(s_gc, server.pid), GcFile(p_gc, proxy.pid)


def probe_window(
    probe: ClientCtl, secs: float, pids: dict[str, list[int]], during: Any = None
) -> dict[str, Any]:
    """Both probes (through the proxy, straight to the stand-in) send a Heartbeat every
    10 ms for `secs`; `during` (if given) is called at a third of the window."""
    for tag in ("via", "direct"):
        probe.cmd(cmd="start", tag=tag, mode="light", size="hb", rate=100.0)
    time.sleep(0.2)
    for tag in ("via", "direct"):
        probe.cmd(cmd="mark", tag=tag)
    c0 = {k: sum(cpu_ns(p) for p in v) for k, v in pids.items()}
    j0 = sys_jiffies()
    t0 = time.perf_counter()
    extra = None
    if during is not None:
        time.sleep(secs / 3)
        extra = during()
        # the call that waited through the pause must be answered inside the window
        time.sleep(max(0.5, secs - (time.perf_counter() - t0)))
    else:
        time.sleep(secs)
    c1 = {k: sum(cpu_ns(p) for p in v) for k, v in pids.items()}
    j1 = sys_jiffies()
    dt = time.perf_counter() - t0
    out = {tag: probe.cmd(cmd="stop", tag=tag) for tag in ("via", "direct")}
    cpu = {k: 100.0 * (c1[k] - c0[k]) / 1e9 / dt for k in pids}
    busy = 100.0 * (os.cpu_count() or 1) * (j1[0] - j0[0]) / max(1, j1[1] - j0[1])
    out["cpu_pct"] = cpu
    out["other_pct"] = max(0.0, busy - sum(cpu.values()))
    out["during"] = extra
    return out


def lat(r: dict[str, Any]) -> dict[str, float]:
    return {
        "p50_ms": r["p50_us"] / 1000.0,
        "p99_ms": r["p99_us"] / 1000.0,
        "max_ms": r["max_us"] / 1000.0,
        "count": r["count"],
        "lost": r["lost"],
        "closed": r["closed"],
        "callerrors": r["callerrors"],
    }


def run_path(
    name: str, sizes: list[int], tmp: str, a: argparse.Namespace, quiet: list[float]
) -> list[dict[str, Any]]:
    procs: list[LineProc] = []
    rows: list[dict[str, Any]] = []
    print(f"\n=== {name} ===", flush=True)
    try:
        server, proxy, port, admin, s_gc, p_gc = start_path(name, tmp, a)
        procs += [server, proxy]
        idle = ClientCtl(os.path.join(tmp, f"{name}-idle-client.log"))
        probe = ClientCtl(os.path.join(tmp, f"{name}-probe-client.log"))
        procs += [idle, probe]
        for tag, p in (("via", port), ("direct", server.port)):  # type: ignore[attr-defined]
            r = probe.cmd(
                cmd="connect", tag=tag, host="127.0.0.1", port=p, n=1, path_prefix="/ocpp/PROBE"
            )
            if not r["ok"]:
                raise RuntimeError(f"probe connect failed: {r}")
            probe.cmd(cmd="exchange", tag=tag, size="boot")
        # forget the collections of the start-up (imports, the controller's own
        # gc.collect() before gc.freeze())
        p_gc.ask(signal.SIGUSR2, "tracked")
        s_gc.ask(signal.SIGUSR2, "tracked")
        pids = {
            "proxy": descendants(proxy.pid),
            "server": [server.pid],
            "clients": [idle.pid, probe.pid],
        }
        have = 1  # the probe through the proxy is the first charger
        for size in sizes:
            add = size - have
            t0 = time.perf_counter()
            if add > 0:
                r = idle.cmd(
                    cmd="connect",
                    tag=f"s{size}",
                    host="127.0.0.1",
                    port=port,
                    n=add,
                    id_start=have + 1,
                    path_prefix="/ocpp/M",
                    concurrency=100,
                    timeout=60.0 + add / 50.0,
                )
                if not r["ok"]:
                    raise RuntimeError(
                        f"{name}: connecting {add} chargers failed: {r['failed']} failed, "
                        f"first error {r['first_error']}"
                    )
                x = idle.cmd(cmd="exchange", tag=f"s{size}", size="boot", timeout=60.0)
                if not x["ok"] or x["callerrors"] or x["mismatched"]:
                    raise RuntimeError(f"{name}: BootNotification exchange failed: {x}")
                have = size
            connect_s = time.perf_counter() - t0
            if admin is not None:
                mt = scrape(admin)
                online = int(mt.get('ocpp_lc_uplinks{state="online"}', 0))
                connected = int(mt.get("ocpp_lc_chargers_connected", 0))
            else:
                st = server.send("stats", timeout=10.0)
                online = connected = int(st["open"]) - 1  # minus the direct probe
            time.sleep(1.0)
            if quiet[0] > 0:
                w = wait_quiet(pids, min(5.0, quiet[0]))
                quiet[0] -= w
            s_gc.ask(signal.SIGUSR2, "tracked")
            # collections the proxy made by itself while the chargers were added
            before = p_gc.ask(signal.SIGUSR2, "tracked")
            idle_w = probe_window(probe, a.window, pids)
            nat_p = p_gc.ask(signal.SIGUSR2, "tracked")
            nat_s = s_gc.ask(signal.SIGUSR2, "tracked")
            rss = rss_kib(proxy.pid)
            srv_rss = rss_kib(server.pid)
            nfd = fds(proxy.pid)

            def force(gcf: GcFile = p_gc) -> dict[str, Any]:
                return gcf.ask(signal.SIGUSR1, "forced_ms")

            forced_w = probe_window(probe, 1.5, pids, during=force)
            row = {
                "path": name,
                "size": size,
                "connect_s": connect_s,
                "online": online,
                "connected": connected,
                "rss_kib": rss,
                "server_rss_kib": srv_rss,
                "fds": nfd,
                "tracked": nat_p["tracked"],
                "frozen": nat_p["frozen"],
                "natural": nat_p["natural"],
                "natural_while_adding": before["natural"],
                "server_natural": nat_s["natural"],
                "idle": {"via": lat(idle_w["via"]), "direct": lat(idle_w["direct"])},
                "idle_cpu_pct": idle_w["cpu_pct"],
                "idle_other_pct": idle_w["other_pct"],
                "forced_ms": forced_w["during"]["forced_ms"],
                "forced_probe": {
                    "via": lat(forced_w["via"]),
                    "direct": lat(forced_w["direct"]),
                },
                "forced_other_pct": forced_w["other_pct"],
            }
            rows.append(row)
            print(
                f"  {size:>6} chargers: online {online}, RSS {rss / 1024:.1f} MiB, fds {nfd}, "
                f"tracked {row['tracked']:,} (frozen {row['frozen']:,}); idle probe p50 "
                f"{row['idle']['via']['p50_ms']:.2f} p99 {row['idle']['via']['p99_ms']:.2f} "
                f"max {row['idle']['via']['max_ms']:.1f} ms (direct max "
                f"{row['idle']['direct']['max_ms']:.1f}); collections (count/longest ms by "
                f"generation) in the window {gens(row['natural'])}, the stand-in's "
                f"{gens(row['server_natural'])}, while adding {gens(row['natural_while_adding'])}"
                f"; full collection {row['forced_ms']:.1f} ms "
                f"(probe max {row['forced_probe']['via']['max_ms']:.1f} ms); other cpu "
                f"{row['idle_other_pct']:.0f}%; added in {connect_s:.1f}s",
                flush=True,
            )
    finally:
        for p in procs:
            if isinstance(p, ClientCtl):
                p.close()
        for p in reversed(procs):
            if not isinstance(p, ClientCtl):
                p.stop()
    return rows


def gens(natural: dict[str, list[float]]) -> str:
    """Collections by generation: ``g0 12/3.1 g1 1/40.2 g2 0/0.0`` (count/longest ms)."""
    return " ".join(f"g{g} {v[0]:.0f}/{v[1]:.1f}" for g, v in sorted(natural.items()))


def worst(natural: dict[str, list[float]]) -> tuple[float, str]:
    """(longest pause ms, its generation) among the collections the interpreter made."""
    ms, g = max(((v[1], k) for k, v in natural.items() if v[0]), default=(0.0, "-"))
    return ms, g


def slope(a_: dict[str, Any], b: dict[str, Any]) -> float:
    return (b["rss_kib"] - a_["rss_kib"]) / max(1, b["size"] - a_["size"])


def report(all_rows: dict[str, list[dict[str, Any]]], capped: bool) -> dict[str, Any]:
    print("\n=== Idle memory per charger and collector pauses ===")
    hdr = (
        f"{'path':>10} {'chargers':>8} {'RSS MiB':>8} {'KiB/chg':>8} {'fds':>6} "
        f"{'tracked':>9} {'frozen':>8} {'lag p50':>7} {'lag p99':>7} {'lag max':>7} "
        f"{'direct max':>10} {'GC max (gen)':>12} {'adding GC max':>13} {'full GC ms':>10} "
        f"{'probe max':>9} {'srv MiB':>7} {'other%':>6}"
    )
    print(hdr)
    print("-" * len(hdr))
    out: dict[str, Any] = {}
    for name, rows in all_rows.items():
        prev = None
        for r in rows:
            kib = slope(prev, r) if prev is not None else float("nan")
            r["kib_per_charger_step"] = kib
            w_ms, w_g = worst(r["natural"])
            a_ms, a_g = worst(r["natural_while_adding"])
            print(
                f"{name:>10} {r['size']:>8,} {r['rss_kib'] / 1024:>8.1f} "
                f"{'-' if prev is None else format(kib, '.1f'):>8} {r['fds']:>6} "
                f"{r['tracked']:>9,} {r['frozen']:>8,} {r['idle']['via']['p50_ms']:>7.2f} "
                f"{r['idle']['via']['p99_ms']:>7.2f} {r['idle']['via']['max_ms']:>7.1f} "
                f"{r['idle']['direct']['max_ms']:>10.1f} {f'{w_ms:.1f} ({w_g})':>12} "
                f"{f'{a_ms:.1f} ({a_g})':>13} "
                f"{r['forced_ms']:>10.1f} {r['forced_probe']['via']['max_ms']:>9.1f} "
                f"{r['server_rss_kib'] / 1024:>7.1f} {r['idle_other_pct']:>6.0f}"
            )
            prev = r
        big = [r for r in rows if r["size"] >= 1000]
        summary: dict[str, Any] = {}
        if len(big) >= 2:
            summary["kib_per_charger"] = slope(big[0], big[-1])
            summary["slope_from_to"] = [big[0]["size"], big[-1]["size"]]
        elif len(rows) >= 2:
            summary["kib_per_charger"] = slope(rows[0], rows[-1])
            summary["slope_from_to"] = [rows[0]["size"], rows[-1]["size"]]
        last = rows[-1] if rows else None
        if last is not None and "kib_per_charger" in summary:
            summary["rss_mib_at_10000"] = (
                last["rss_kib"] + summary["kib_per_charger"] * (10_000 - last["size"])
            ) / 1024.0
            summary["rss_10000_extrapolated"] = last["size"] != 10_000
        if rows:
            summary["max_full_gc_ms"] = max(r["forced_ms"] for r in rows)
            summary["max_natural_gc_ms"] = max(
                max(v[1] for v in r["natural"].values()) for r in rows
            )
            summary["max_idle_lag_ms"] = max(r["idle"]["via"]["max_ms"] for r in rows)
            summary["max_idle_lag_direct_ms"] = max(r["idle"]["direct"]["max_ms"] for r in rows)
            summary["max_idle_p99_ms"] = max(r["idle"]["via"]["p99_ms"] for r in rows)
            summary["max_lag_excess_ms"] = max(
                r["idle"]["via"]["max_ms"] - r["idle"]["direct"]["max_ms"] for r in rows
            )
            adding = max(
                ((*worst(r["natural_while_adding"]), r["size"]) for r in rows),
                key=lambda x: x[0],
            )
            summary["max_natural_gc_adding_ms"] = adding[0]
            summary["max_natural_gc_adding_where"] = f"generation {adding[1]}, up to {adding[2]:,}"
            summary["largest"] = rows[-1]["size"]
        out[name] = summary
    print()
    for name, s in out.items():
        if "kib_per_charger" not in s:
            continue
        ext = " (extrapolated from the slope)" if s.get("rss_10000_extrapolated") else ""
        print(
            f"{name}: {s['kib_per_charger']:.1f} KiB per charger (RSS slope "
            f"{s['slope_from_to'][0]:,} -> {s['slope_from_to'][1]:,}); RSS at 10,000 chargers "
            f"{s['rss_mib_at_10000']:.0f} MiB{ext}; longest full collection "
            f"{s['max_full_gc_ms']:.1f} ms, longest collection made by the interpreter in an "
            f"idle window {s['max_natural_gc_ms']:.1f} ms (while chargers were added "
            f"{s['max_natural_gc_adding_ms']:.1f} ms, {s['max_natural_gc_adding_where']}); "
            "idle probe p99 <= "
            f"{s['max_idle_p99_ms']:.2f} ms, max {s['max_idle_lag_ms']:.1f} ms (straight to "
            f"the stand-in: max {s['max_idle_lag_direct_ms']:.1f} ms; worst excess in one "
            f"window {s['max_lag_excess_ms']:.1f} ms)"
        )
    c = out.get("controller", {})
    n = out.get("naive", {})
    if c and n and "kib_per_charger" in c and "kib_per_charger" in n:
        print(
            "controller / naive: KiB per charger "
            f"{c['kib_per_charger'] / n['kib_per_charger']:.2f}x, longest full collection "
            f"{c['max_full_gc_ms']:.1f} vs {n['max_full_gc_ms']:.1f} ms"
        )
    if c and "kib_per_charger" in c:
        lag_excess = c["max_lag_excess_ms"]
        targets = {
            f"KiB per charger <= {TARGET_KIB:.0f}": c["kib_per_charger"] <= TARGET_KIB,
            f"RSS at 10,000 chargers < {TARGET_RSS_MIB_AT_10K:.0f} MiB"
            + (" (extrapolated)" if c.get("rss_10000_extrapolated") else ""): c["rss_mib_at_10000"]
            < TARGET_RSS_MIB_AT_10K,
            f"full collection <= {TARGET_PAUSE_MS:.0f} ms at {c['largest']:,}": c["max_full_gc_ms"]
            <= TARGET_PAUSE_MS,
            f"collections made by the interpreter <= {TARGET_PAUSE_MS:.0f} ms": max(
                c["max_natural_gc_ms"], c["max_natural_gc_adding_ms"]
            )
            <= TARGET_PAUSE_MS,
            f"idle probe max beyond the direct probe's <= {TARGET_PAUSE_MS:.0f} ms": lag_excess
            <= TARGET_PAUSE_MS,
        }
        print("\ntargets (controller):")
        for k, ok in targets.items():
            print(f"  {k}: {'PASS' if ok else 'FAIL'}")
        if capped:
            print("  (the largest size was capped by the nofile limit; see the note at the top)")
        out["targets"] = targets
    return out


def on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="sizes 1,1000, 3 s windows")
    ap.add_argument("--sizes", help="charger counts (default 1,1000,5000,10000; --quick 1,1000)")
    ap.add_argument("--window", type=float, help="idle window s (default 10; --quick 3)")
    ap.add_argument("--paths", default="controller,naive")
    ap.add_argument("--connect-rate", type=float, default=100_000.0)
    ap.add_argument("--quiet-wait", type=float, help="s in all (default 30; --quick 8)")
    ap.add_argument("--keep-logs", metavar="DIR")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    sizes = sorted(
        {int(x) for x in (a.sizes or ("1,1000" if a.quick else "1,1000,5000,10000")).split(",")}
    )
    if a.window is None:
        a.window = 3.0 if a.quick else 10.0
    if a.quiet_wait is None:
        a.quiet_wait = 8.0 if a.quick else 30.0
    paths = [p for p in PATHS if p in a.paths.split(",")]
    signal.signal(signal.SIGTERM, on_sigterm)
    t_start = time.time()
    need = 4 * max(sizes) + 256
    soft0, soft, hard = raise_nofile(need)
    print(f"nofile: soft {soft0} -> {soft}, hard {hard}; wanted 4 x N + 256 = {need:,}")
    capped = False
    if soft < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            soft = hard = need
            print(f"  raised the hard limit to {need:,}")
        except (ValueError, OSError) as e:
            print(f"  cannot raise the hard limit ({e})")
    # the proxy holds two sockets per charger, plus about 30 other fds
    fit = (soft - 128) // 2
    if max(sizes) > fit:
        cap = fit // 100 * 100
        print(
            f"  the proxy needs about 2 x N + 30 fds: N is capped at {cap:,} instead of "
            f"{max(sizes):,}; RSS at 10,000 is extrapolated from the slope"
        )
        sizes = sorted({min(s, cap) for s in sizes})
        capped = True
    note = machine_note()
    print(f"machine: {note}")
    j0 = sys_jiffies()
    time.sleep(0.5)
    j1 = sys_jiffies()
    busy0 = 100.0 * (os.cpu_count() or 1) * (j1[0] - j0[0]) / max(1, j1[1] - j0[1])
    print(f"machine busy before start: {busy0:.0f}% of a core (other work)")
    print(
        f"sizes {', '.join(f'{s:,}' for s in sizes)}; idle window {a.window:g} s with a "
        "Heartbeat every 10 ms from the probe; then one full collection (SIGUSR1 to gc_hook)"
    )
    tmp = tempfile.mkdtemp(prefix="bench-memory-")
    all_rows: dict[str, list[dict[str, Any]]] = {}
    code = 0
    quiet = [a.quiet_wait]
    out: dict[str, Any] = {}
    try:
        for name in paths:
            all_rows[name] = run_path(name, sizes, tmp, a, quiet)
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
        logs = {}
        for fn in sorted(os.listdir(tmp)):
            if fn.endswith(".log"):
                logs[fn] = keep_last(os.path.join(tmp, fn), 10)
        shutil.rmtree(tmp, ignore_errors=True)
    if any(all_rows.values()):
        out = report({k: v for k, v in all_rows.items() if v}, capped)
    for fn, (n_lines, tail) in logs.items():
        if n_lines:
            print(f"\n{fn}: {n_lines} lines, the last {len(tail)}:")
            for line in tail:
                print("    " + line[:300])
    print(f"\nelapsed {time.time() - t_start:.1f}s")
    if a.json and all_rows:
        with open(a.json, "w") as fh:
            json.dump(
                {
                    "machine": note,
                    "busy_before_start_pct": busy0,
                    "sizes": sizes,
                    "capped_by_nofile": capped,
                    "args": {k: v for k, v in vars(a).items() if k != "json"},
                    "rows": all_rows,
                    "summary": out,
                },
                fh,
                indent=1,
                default=str,
            )
        print(f"figures written to {a.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
