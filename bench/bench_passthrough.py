#!/usr/bin/env python3
"""Pass-through benchmark: the controller against a naive proxy and the direct path.

Four paths, measured in one run and interleaved rep by rep, so that the ratios are
not skewed by machine noise (all on 127.0.0.1, each role its own process):

  direct      chargers -> CSMS stand-in (websockets server, bench/common.py server)
  naive       chargers -> bench/naive_proxy.py -> CSMS stand-in (the floor: a few dozen
              lines of websockets, default asyncio loop, compression off)
  nginx       chargers -> nginx (one worker, WebSocket reverse proxy, the C reference;
              the Debian package, installed by the script when missing and root)
              -> CSMS stand-in
  controller  chargers -> ``python -m proxy serve`` -> CSMS stand-in

Chargers are the lean load generator of bench/common.py (raw asyncio protocol on
uvloop, subprotocol ocpp1.6, one CALL outstanding per connection, identities
CP0001, CP0002, ...). Each connection first sends a BootNotification, then for
N in (1, 100, 1000) connections and Heartbeat / MeterValues (about 620 B) CALLs:

  light  open loop, 2000 calls/s in total spread over the N connections
         (at N=1 the round trip caps it lower): round trip p50 / p99;
  sat    closed loop, each connection sends its next CALL as soon as the answer
         arrives: calls/s, and the CPU each process spends per call (/proc schedstat).

Every window is 0.5 s after a 0.15 s warm-up; figures are medians of 3 reps;
ratios (controller/naive, naive/direct) are taken rep by rep. Targets:
saturated calls/s through the controller >= 0.9x naive, light-load p50 <= 1.2x naive
(issue 2; issue 8 asks >= 1.1x and <= 1.0x: ``--target-sat 1.1 --target-p50 1.0``).
The CSMS stand-in counts the CALLs it answers, so a CALL that the controller did
not forward (or answered itself) shows up as "not forwarded".

Run:   .venv/bin/python bench/bench_passthrough.py [--quick] [--json FILE]
Other: --paths direct,naive  |  --controller-cmd naive (the naive proxy stands in for
       the controller)  |  --controller-cmd '{python} -m proxy serve --flag'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (
    HERE,
    PY,
    SIZE_NAMES,
    ClientCtl,
    LineProc,
    ServerCtl,
    calibrate_loopback,
    call_frame_text,
    cpu_ns,
    descendants,
    free_port,
    keep_last,
    machine_note,
    med,
    poll_http,
    print_table,
    raise_nofile,
    run_phase,
    sys_jiffies,
    wait_port,
)

REPO = os.path.dirname(HERE)
DEFAULT_CONTROLLER_CMD = "{python} -m proxy serve"
NAIVE_CMD = "{python} {bench}/naive_proxy.py --port {port} --upstream {upstream}"
PATH_NAMES = ("direct", "naive", "nginx", "controller")
NGINX_CONF = """
{user}worker_processes 1;
worker_rlimit_nofile 65536;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
daemon off;
events {{ worker_connections 30000; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            tcp_nodelay on;
        }}
    }}
}}
"""


def find_nginx() -> str:
    """The nginx binary; installed from the Debian package when missing and allowed."""
    for cand in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if cand and os.path.exists(cand):
            return cand
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("nginx: not found, installing the Debian package ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "nginx"], check=False, env=env, capture_output=True
        )
        for cand in (shutil.which("nginx"), "/usr/sbin/nginx"):
            if cand and os.path.exists(cand):
                return cand
    raise RuntimeError("nginx is not installed (apt-get install nginx) and could not be")


def start_nginx(upstream_port: int, tmp: str) -> tuple[LineProc, int]:
    """nginx as a WebSocket reverse proxy (one worker, the C reference), in the foreground."""
    binary = find_nginx()
    port = free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(
            NGINX_CONF.format(
                user="user root;\n" if os.geteuid() == 0 else "",
                tmp=tmp,
                port=port,
                upstream=upstream_port,
            )
        )
    proc = LineProc(
        [binary, "-c", conf, "-p", tmp],
        os.path.join(tmp, "nginx.log"),
        stdin=False,
        stdout_to_log=True,
    )
    wait_port(port, 20.0, proc.alive)
    return proc, port


COUNTERS = ("closed", "lost", "mismatched", "callerrors", "incoming_calls", "still_busy")


@dataclass
class Path:
    name: str
    port: int
    hop: LineProc | None = None  # the proxy process of this path (None: direct)
    next_id: int = 1  # identities are never reused within a run
    connect_secs: dict[int, float] = field(default_factory=dict)
    problems: dict[str, int] = field(default_factory=dict)

    def note(self, key: str, n: int) -> None:
        if n:
            self.problems[key] = self.problems.get(key, 0) + n


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="N=1,100, Heartbeat only (about 40 s)")
    ap.add_argument("--paths", default="direct,naive,nginx,controller")
    ap.add_argument("--ns", help="charger counts (default 1,100,1000; --quick 1,100)")
    ap.add_argument("--sizes", help="hb,mv (default hb,mv; --quick hb)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--window", type=float, default=0.5, help="seconds per measurement window")
    ap.add_argument("--warmup", type=float, default=0.15)
    ap.add_argument("--light-rate", type=float, default=2000.0, help="light load, calls/s in all")
    ap.add_argument(
        "--controller-cmd",
        default=os.environ.get("BENCH_CONTROLLER_CMD", DEFAULT_CONTROLLER_CMD),
        help="command of the controller (env BENCH_CONTROLLER_CMD); placeholders {python} "
        "{bench} {repo} {port} {upstream} {admin_port}; 'naive' runs the naive proxy "
        f"in its place (default: {DEFAULT_CONTROLLER_CMD!r}, run in the repository root)",
    )
    ap.add_argument(
        "--controller-ready",
        choices=("auto", "readyz", "stdout", "port"),
        default="auto",
        help="readiness: GET /readyz on the admin port, a READY line, or the listen port "
        "(auto: readyz for the controller, stdout for 'naive')",
    )
    ap.add_argument("--ready-timeout", type=float, default=20.0)
    ap.add_argument("--target-sat", type=float, default=0.9, help="min controller/naive calls/s")
    ap.add_argument("--target-p50", type=float, default=1.2, help="max controller/naive p50")
    ap.add_argument("--retry-budget", type=float, default=8.0, help="s for noisy-window retries")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        help="s in all to wait for other work to calm down before windows (default 45; --quick 10)",
    )
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target FAILs")
    ap.add_argument("--keep-logs", metavar="DIR", help="copy the processes' logs into DIR")
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    a = ap.parse_args()
    a.ns = [int(x) for x in (a.ns or ("1,100" if a.quick else "1,100,1000")).split(",")]
    a.sizes = (a.sizes or ("hb" if a.quick else "hb,mv")).split(",")
    a.paths = [p.strip() for p in a.paths.split(",") if p.strip()]
    for p in a.paths:
        if p not in PATH_NAMES:
            ap.error(f"unknown path {p!r} (choose from {', '.join(PATH_NAMES)})")
    a.paths = [p for p in PATH_NAMES if p in a.paths]  # fixed order: direct, naive, nginx, ...
    for s in a.sizes:
        if s not in ("hb", "mv"):
            ap.error(f"unknown size {s!r} (hb, mv)")
    if a.quick and a.retry_budget == 8.0:
        a.retry_budget = 4.0
    if a.quiet_wait is None:
        a.quiet_wait = 10.0 if a.quick else 45.0
    return a


def start_controller(a: argparse.Namespace, upstream_port: int, tmp: str) -> tuple[LineProc, int]:
    port, admin_port = free_port(), free_port()
    naive = a.controller_cmd.strip() == "naive"
    template = NAIVE_CMD if naive else a.controller_cmd
    upstream = f"ws://127.0.0.1:{upstream_port}"
    args = [
        x.format(
            python=PY,
            bench=HERE,
            repo=REPO,
            port=port,
            upstream=upstream,
            admin_port=admin_port,
        )
        for x in shlex.split(template)
    ]
    env = dict(os.environ)
    env.update(
        {
            "OCPP_LC_LISTEN__HOST": "127.0.0.1",
            "OCPP_LC_LISTEN__PORT": str(port),
            "OCPP_LC_CSMS__URL": upstream,
            "OCPP_LC_STORE__PATH": os.path.join(tmp, "lc.sqlite3"),
            "OCPP_LC_ADMIN__HOST": "127.0.0.1",
            "OCPP_LC_ADMIN__PORT": str(admin_port),
            "OCPP_LC_LOG__LEVEL": "WARNING",
            "OCPP_LC_LISTEN__COMPRESSION": "false",
            # the benchmark's chargers are not registered one by one
            "OCPP_LC_ADMISSION__UNKNOWN_IDENTITIES": "pass_through",
            "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", ""),
        }
    )
    ready = a.controller_ready
    if ready == "auto":
        ready = "stdout" if naive else "readyz"
    print(f"controller: {shlex.join(args)} (ready: {ready})")
    proc = LineProc(
        args,
        os.path.join(tmp, "controller.log"),
        stdin=False,
        env=env,
        cwd=REPO,
        stdout_to_log=ready != "stdout",
    )
    try:
        if ready == "readyz":
            poll_http(f"http://127.0.0.1:{admin_port}/readyz", a.ready_timeout, proc.alive)
        elif ready == "stdout":
            proc.wait_ready(a.ready_timeout)
        else:
            wait_port(port, a.ready_timeout, proc.alive)
    except Exception as e:
        _, tail = keep_last(proc.log_path)
        proc.stop()
        msg = f"the controller did not become ready: {e}"
        if tail:
            msg += "\n  last lines of its log:\n    " + "\n    ".join(tail)
        raise RuntimeError(msg) from None
    return proc, port


def other_cpu(pids: dict[str, list[int]], secs: float) -> float:
    """CPU (% of one core) that processes outside the benchmark used during `secs`."""
    c0 = sum(cpu_ns(p) for v in pids.values() for p in v)
    j0 = sys_jiffies()
    time.sleep(secs)
    c1 = sum(cpu_ns(p) for v in pids.values() for p in v)
    j1 = sys_jiffies()
    busy = 100.0 * (os.cpu_count() or 1) * (j1[0] - j0[0]) / max(1, j1[1] - j0[1])
    return max(0.0, busy - 100.0 * (c1 - c0) / 1e9 / secs)


def wait_quiet(pids: dict[str, list[int]], budget: float, limit: float = 25.0) -> float:
    """Wait (at most `budget` s) until other work uses at most `limit` % of a core.

    Returns the seconds waited beyond the first 0.2 s sample.
    """
    t0 = time.perf_counter()
    if other_cpu(pids, 0.2) <= limit:
        return 0.0
    while time.perf_counter() - t0 < budget:
        if other_cpu(pids, 0.3) <= limit:
            break
    return time.perf_counter() - t0


def measure(
    a: argparse.Namespace, client: ClientCtl, server: ServerCtl, paths: list[Path]
) -> dict[str, dict[int, dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]]]:
    """For each N: connect N chargers per path, boot them, then for each rep, size and
    path (interleaved) a light-load window and a saturation window.

    Noise guard: when the rest of the machine used more than 25 % of a core during a
    window pair, or a saturation window with N >= 100 left every process below 85 %
    of a core (a stall from outside), the pair is measured again (at most twice, within
    the retry budget for the whole run) and the quietest attempt is kept.
    """
    res: dict[str, dict[int, dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]]] = {
        p.name: {n: {s: [] for s in a.sizes} for n in a.ns} for p in paths
    }
    spent, retried = 0.0, 0
    waited, waits = 0.0, 0
    for n in a.ns:
        for p in paths:
            r = client.cmd(
                cmd="connect",
                tag=p.name,
                host="127.0.0.1",
                port=p.port,
                n=n,
                id_start=p.next_id,
                timeout=120.0,
            )
            p.next_id += n
            p.connect_secs[n] = r["secs"]
            if not r["ok"]:
                raise RuntimeError(f"connect {n} chargers to {p.name} failed: {r}")
            b = client.cmd(cmd="exchange", tag=p.name, size="boot", timeout=60.0)
            for k in COUNTERS:
                p.note("boot " + k, b.get(k, 0))
            print(
                f"  connected {n:4d} to {p.name:<10s} in {r['secs']:.2f}s, "
                f"BootNotification {'ok' if b['ok'] else 'FAILED: ' + json.dumps(b)}"
            )
        time.sleep(0.2)
        pids = {
            "server": [server.pid],
            "client": [client.pid],
            **{p.name: descendants(p.hop.pid) for p in paths if p.hop is not None},
        }
        for rep in range(a.reps):
            # the order of the paths rotates from rep to rep, so none always follows another
            order = paths[rep % len(paths) :] + paths[: rep % len(paths)]
            for s in a.sizes:
                for p in order:
                    best: tuple[float, dict[str, Any], dict[str, Any]] | None = None
                    if waited < a.quiet_wait:
                        w = wait_quiet(pids, min(6.0, a.quiet_wait - waited))
                        waited += w
                        waits += w > 0
                    for attempt in range(3):
                        t_a = time.perf_counter()
                        kw: dict[str, Any] = {"warmup": a.warmup, "window": a.window}
                        light = run_phase(
                            client, p.name, "light", s, pids, server=server, rate=a.light_rate, **kw
                        )
                        sat = run_phase(client, p.name, "sat", s, pids, server=server, **kw)
                        noise = max(light["other_pct"], sat["other_pct"])
                        stalled = n >= 100 and max(sat["cpu_pct"].values()) < 85.0
                        score = noise + (100.0 if stalled else 0.0)
                        if best is None or score < best[0]:
                            best = (score, light, sat)
                        if attempt:
                            spent += time.perf_counter() - t_a
                            retried += 1
                        if score <= 25.0 or spent >= a.retry_budget:
                            break
                    assert best is not None
                    _, light, sat = best
                    for w in (light, sat):
                        for k in COUNTERS:
                            p.note(k, w.get(k, 0))
                        p.note("not forwarded", w["sent"] - w["forwarded"])
                    res[p.name][n][s].append((light, sat))
        for p in paths:
            r = client.cmd(cmd="close", tag=p.name, timeout=30.0)
            p.note("close not acknowledged", r.get("aborted", 0))
        time.sleep(0.3)
    print(
        f"  noisy-neighbour guard: waited {waited:.1f}s for other work to calm down "
        f"({waits} times); {retried} window pairs re-measured ({spent:.1f}s)"
    )
    return res


def summarize(runs: list[tuple[dict[str, Any], dict[str, Any]]], hop: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "light_rate": med([lw["rate"] for lw, _ in runs]),
        "light_p50_us": med([lw["p50_us"] for lw, _ in runs]),
        "light_p99_us": med([lw["p99_us"] for lw, _ in runs]),
        "sat_rate": med([sw["rate"] for _, sw in runs]),
        "sat_p50_us": med([sw["p50_us"] for _, sw in runs]),
        "sat_p99_us": med([sw["p99_us"] for _, sw in runs]),
        "sat_rates": [round(sw["rate"]) for _, sw in runs],
        "other_pct": med([sw["other_pct"] for _, sw in runs] + [lw["other_pct"] for lw, _ in runs]),
    }
    for k in ("server", "client", *([hop] if hop else [])):
        key = "hop" if k == hop else k
        out[f"{key}_us_per_call"] = med([sw["cpu_us_per_call"][k] for _, sw in runs])
        out[f"{key}_cpu_pct"] = med([sw["cpu_pct"][k] for _, sw in runs])
    if hop:
        # the hop's CPU per call relative to the server's in the same window: steadier
        # than absolute figures when the machine's speed varies
        out["hop_per_server_cpu"] = med(
            [sw["cpu_us_per_call"][hop] / sw["cpu_us_per_call"]["server"] for _, sw in runs]
        )
    return out


def per_rep(
    num: list[tuple[dict[str, Any], dict[str, Any]]],
    den: list[tuple[dict[str, Any], dict[str, Any]]],
) -> dict[str, Any]:
    """Ratios num/den taken rep by rep (same rep index = same minute of the run)."""
    sat = [
        sn["rate"] / sd["rate"] if sd["rate"] else float("nan")
        for (_, sn), (_, sd) in zip(num, den, strict=True)
    ]
    p50 = [ln["p50_us"] / ld["p50_us"] for (ln, _), (ld, _) in zip(num, den, strict=True)]
    p99 = [ln["p99_us"] / ld["p99_us"] for (ln, _), (ld, _) in zip(num, den, strict=True)]
    add = [ln["p50_us"] - ld["p50_us"] for (ln, _), (ld, _) in zip(num, den, strict=True)]
    return {
        "sat": med(sat),
        "sat_reps": [round(x, 3) for x in sat],
        "p50": med(p50),
        "p50_reps": [round(x, 3) for x in p50],
        "p99": med(p99),
        "p50_added_us": med(add),
    }


def report(
    a: argparse.Namespace,
    paths: list[Path],
    res: dict[str, dict[int, dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]]],
) -> dict[str, Any]:
    names = [p.name for p in paths]
    summ = {
        p.name: {
            n: {s: summarize(res[p.name][n][s], p.name if p.hop else None) for s in a.sizes}
            for n in a.ns
        }
        for p in paths
    }
    rows = []
    for name in names:
        for n in a.ns:
            for s in a.sizes:
                m = summ[name][n][s]
                rows.append(
                    [
                        name,
                        n,
                        SIZE_NAMES[s],
                        m["light_rate"],
                        m["light_p50_us"],
                        m["light_p99_us"],
                        m["sat_rate"],
                        m["sat_p50_us"],
                        m["sat_p99_us"],
                        m["server_us_per_call"],
                        m.get("hop_us_per_call", "-"),
                        m.get("hop_per_server_cpu", "-"),
                        m["client_us_per_call"],
                        m["server_cpu_pct"],
                        m.get("hop_cpu_pct", "-"),
                        m["other_pct"],
                    ]
                )
    print_table(
        [
            "path",
            "N",
            "msg",
            "light/s",
            "light p50us",
            "light p99us",
            "sat calls/s",
            "sat p50us",
            "sat p99us",
            "server us/call",
            "hop us/call",
            "hop/server cpu",
            "client us/call",
            "server cpu%",
            "hop cpu%",
            "other cpu%",
        ],
        rows,
        title=f"Per path (medians of {a.reps} reps; us = microseconds; CPU per call and cpu% "
        "(of one core) from the saturation windows; hop = the proxy of the path)",
    )

    ratios: dict[str, dict[int, dict[str, dict[str, Any]]]] = {}
    pairs = [
        (x, y)
        for x, y in (
            ("naive", "direct"),
            ("nginx", "naive"),
            ("controller", "naive"),
            ("controller", "nginx"),
            ("controller", "direct"),
        )
        if x in names and y in names
    ]
    for x, y in pairs:
        ratios[f"{x}/{y}"] = {
            n: {s: per_rep(res[x][n][s], res[y][n][s]) for s in a.sizes} for n in a.ns
        }
    if pairs:
        short = {"controller": "ctrl", "naive": "naive", "nginx": "nginx", "direct": "direct"}
        head = ["N", "msg"]
        for x, y in pairs:
            xy = f"{short[x]}/{short[y]}"
            head += [f"{xy} sat"]
            if (x, y) == ("naive", "direct") or "naive" not in names:
                head.append("(per rep)")  # controller/naive per rep: in the targets table
            head += [f"{xy} p50", f"{short[x]} p50 +us"]
        if "controller" in names and "naive" in names:
            head.append("ctrl/naive hop us/call")
        rows = []
        for n in a.ns:
            for s in a.sizes:
                row: list[Any] = [n, SIZE_NAMES[s]]
                for x, y in pairs:
                    r = ratios[f"{x}/{y}"][n][s]
                    row.append(r["sat"])
                    if (x, y) == ("naive", "direct") or "naive" not in names:
                        row.append("/".join(f"{v:.2f}" for v in r["sat_reps"]))
                    row += [r["p50"], r["p50_added_us"]]
                if "controller" in names and "naive" in names:
                    cn, nv = summ["controller"][n][s], summ["naive"][n][s]
                    row.append(cn["hop_us_per_call"] / nv["hop_us_per_call"])
                rows.append(row)
        print_table(
            head,
            rows,
            title="Ratios taken rep by rep in this run (median; sat = saturated "
            "calls/s, p50 = light-load round trip p50, +us = added to the p50 of the other path)",
        )

    verdict: dict[str, Any] = {}
    if "controller" in names and "naive" in names:
        rows = []
        all_ok = True
        for n in a.ns:
            for s in a.sizes:
                r = ratios["controller/naive"][n][s]
                sat_ok = r["sat"] >= a.target_sat
                p50_ok = r["p50"] <= a.target_p50
                all_ok = all_ok and sat_ok and p50_ok
                # CPU the rest of the machine used during these windows (% of one core)
                noise = med(
                    [
                        w["other_pct"]
                        for x in ("controller", "naive")
                        for pr in res[x][n][s]
                        for w in pr
                    ]
                )
                rows.append(
                    [
                        n,
                        SIZE_NAMES[s],
                        f"{r['sat']:.3f}",
                        "/".join(f"{v:.2f}" for v in r["sat_reps"]),
                        "PASS" if sat_ok else "FAIL",
                        f"{r['p50']:.3f}",
                        "/".join(f"{v:.2f}" for v in r["p50_reps"]),
                        "PASS" if p50_ok else "FAIL",
                        noise,
                    ]
                )
                verdict[f"{n}/{s}"] = {
                    "sat": r["sat"],
                    "sat_ok": sat_ok,
                    "p50": r["p50"],
                    "p50_ok": p50_ok,
                    "other_cpu_pct": noise,
                }
        print_table(
            [
                "N",
                "msg",
                "sat ctrl/naive",
                "(per rep)",
                f">= {a.target_sat:g}",
                "p50 ctrl/naive",
                "(per rep)",
                f"<= {a.target_p50:g}",
                "other cpu%",
            ],
            rows,
            title="Targets (controller against the naive proxy, same run; other cpu% = what "
            "the rest of the machine used during these windows, % of one core)",
        )
        verdict["all"] = all_ok
        print(f"\nOVERALL: {'PASS' if all_ok else 'FAIL'}")
    busy = med(
        [
            w["other_pct"]
            for x in names
            for n in a.ns
            for s in a.sizes
            for pr in res[x][n][s]
            for w in pr
        ]
    )
    verdict["other_cpu_pct"] = busy
    if busy > 25.0:
        print(
            f"WARNING: other work used {busy:.0f}% of a core (median over all windows) while "
            "this ran; ratios are then noisy (about +-0.2 and more): re-run on a quiet machine "
            "before trusting a PASS or a FAIL close to its target."
        )
    return {"summary": summ, "ratios": ratios, "targets": verdict}


def report_problems(paths: list[Path], server_stats: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    print("\nConnections and frames (whole run; boot = the BootNotification exchange)")
    for p in paths:
        secs = ", ".join(f"N={n}: {t:.2f}s" for n, t in p.connect_secs.items())
        probs = ", ".join(f"{k} {v}" for k, v in sorted(p.problems.items())) or "no problem seen"
        print(f"  {p.name:<10s} connect {secs}; {probs}")
        out[p.name] = {"connect_secs": p.connect_secs, "problems": p.problems}
    print(
        "  CSMS stand-in: {calls} CALLs answered, {conns} connections, subprotocols {sp}, "
        "{bad} with a path other than /<identity>, {dfl} offering permessage-deflate, "
        "{oth} non-CALL frames".format(
            calls=server_stats.get("calls"),
            conns=server_stats.get("conns"),
            sp=server_stats.get("subprotocols"),
            bad=server_stats.get("bad_path"),
            dfl=server_stats.get("deflate_offers"),
            oth=server_stats.get("other_frames"),
        )
    )
    out["server"] = server_stats
    return out


def on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    a = parse_args()
    t_start = time.time()
    # SIGTERM ends the run like Ctrl-C: the finally blocks stop every process
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with it ignored
    nofile = raise_nofile(4 * len(a.paths) * max(a.ns) + 256)
    print("nofile (soft before, soft now, hard):", nofile)
    note = machine_note()
    print(f"machine: {note}")
    print(
        f"frames: Heartbeat {len(call_frame_text('hb'))} B, "
        f"MeterValues {len(call_frame_text('mv'))} B; "
        f"paths {','.join(a.paths)}; N {','.join(map(str, a.ns))}; msgs {','.join(a.sizes)}; "
        f"{a.reps} reps of {a.warmup:g}+{a.window:g} s windows; light load {a.light_rate:g} calls/s"
    )
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
    tmp = tempfile.mkdtemp(prefix="bench-passthrough-")
    procs: list[LineProc] = []
    client: ClientCtl | None = None
    paths: list[Path] = []
    logs: dict[str, tuple[int, list[str]]] = {}
    out: dict[str, Any] = {}
    code = 0
    try:
        server = ServerCtl(free_port(), os.path.join(tmp, "server.log"))
        procs.append(server)
        client = ClientCtl(os.path.join(tmp, "client.log"))
        procs.append(client)
        for name in a.paths:
            if name == "direct":
                paths.append(Path(name, server.port))
            elif name == "naive":
                port = free_port()
                naive = LineProc(
                    [
                        PY,
                        os.path.join(HERE, "naive_proxy.py"),
                        "--port",
                        str(port),
                        "--upstream",
                        f"ws://127.0.0.1:{server.port}",
                    ],
                    os.path.join(tmp, "naive.log"),
                    stdin=False,
                )
                procs.append(naive)
                naive.wait_ready()
                paths.append(Path(name, port, naive))
            elif name == "nginx":
                ngx, port = start_nginx(server.port, tmp)
                procs.append(ngx)
                paths.append(Path(name, port, ngx))
            else:
                ctrl, port = start_controller(a, server.port, tmp)
                procs.append(ctrl)
                paths.append(Path(name, port, ctrl))
        res = measure(a, client, server, paths)
        server_stats = server.stats()
        for p in paths:
            if p.hop is not None and not p.hop.alive():
                p.note(f"process exited with code {p.hop.p.returncode}", 1)
        out = report(a, paths, res)
        out["raw"] = res
        out["connections"] = report_problems(paths, server_stats)
        if a.strict and not out["targets"].get("all", True):
            code = 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    except Exception as e:
        import traceback

        traceback.print_exc()
        print(f"\nERROR: {e}", file=sys.stderr)
        code = 1
    finally:
        if client is not None:
            client.close()
        for proc in reversed(procs):
            proc.stop()
        for name in ("server", "naive", "controller", "client"):
            logs[name] = keep_last(os.path.join(tmp, f"{name}.log"))
        if a.keep_logs:
            os.makedirs(a.keep_logs, exist_ok=True)
            for f in os.listdir(tmp):
                with contextlib.suppress(OSError):
                    shutil.copy(os.path.join(tmp, f), a.keep_logs)
        shutil.rmtree(tmp, ignore_errors=True)
    for name, (n, tail) in logs.items():
        if n:
            print(f"\n{name} log: {n} lines, the last {len(tail)}:")
            for line in tail:
                print("    " + line[:300])
    elapsed = time.time() - t_start
    print(f"\nelapsed {elapsed:.1f}s")
    if a.json and out:
        out.update(
            {
                "machine": note,
                "calibration": {"round_trips_per_s": rt, "p50_us": c50, "p99_us": c99},
                "busy_before_start_pct": busy0,
                "args": {k: v for k, v in vars(a).items() if k != "json"},
                "logs": {k: {"lines": n, "tail": t} for k, (n, t) in logs.items()},
                "elapsed_s": elapsed,
            }
        )
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
        print(f"figures written to {a.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
