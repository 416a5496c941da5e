"""What a newcomer and an operator read and run, checked against the code.

* the README's settings table is the one generated from the settings model, and the
  example settings file names every key of the model (and no other) with its default;
* docs/ lists every metric, log event, offline answer and CALLERROR code the code has;
* ``ocpp-lc demo`` runs to ``lost = 0``, and the service never imports the demo;
* ``ocpp-lc local-list import`` shows its progress on large files;
* the Dockerfile's install steps, run in a fresh virtual environment (no Docker engine
  needed), give a package that serves, answers ``/readyz`` through the image's
  HEALTHCHECK command, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from config import settings_table
from config.settings import ENV_PREFIX, Settings, load_settings
from policies.local_list import ListFormatError, parse_csv
from proxy import cli
from proxy.demo import Exchange
from proxy.demo.run import Options, demonstrate, figures
from proxy.frames import ErrorKind
from proxy.metrics import Metrics
from proxy.offline import OCPP16, OCPP201
from proxy.versions import ocpp16, ocpp201

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
SITE_TOML = REPO / "config" / "examples" / "site.toml"


@pytest.fixture(autouse=True)
def no_settings_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OCPP_LC_* variable of the caller's environment leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without OCPP_LC_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --------------------------------------------------------------------------- settings


def test_readme_settings_table_is_the_generated_one() -> None:
    """The block between the settings markers of the README is exactly what
    ``python -m config.settings_table`` prints: run it with ``--write README.md``."""
    block = settings_table.block(README.read_text(encoding="utf-8"))
    assert block is not None, "README.md has no settings block"
    assert block == settings_table.table(), (
        "README.md's settings table is out of date: python -m config.settings_table "
        "--write README.md"
    )


def test_every_setting_has_a_default_and_a_meaning() -> None:
    """Each row of the table says what the key does (a #: comment or a description)."""
    rows = list(settings_table.rows())
    assert len(rows) > 50
    assert not [r.key for r in rows if not r.meaning.strip()]
    keys = {r.key for r in rows}
    assert {
        "listen.port",
        "csms.url",
        "chargers.<identity>.policy.max_energy_on_invalid_id",
    } <= keys


def test_settings_table_check_and_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--check fails on a stale block and passes after --write, which touches only the block."""
    doc = tmp_path / "doc.md"
    doc.write_text(
        f"before\n\n{settings_table.START}\nstale\n{settings_table.END}\n\nafter\n",
        encoding="utf-8",
    )
    assert settings_table.main(["--check", str(doc)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert settings_table.main(["--write", str(doc)]) == 0
    assert settings_table.main(["--check", str(doc)]) == 0
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("before\n\n") and text.endswith("\n\nafter\n")
    assert "| `csms.url` |" in text
    assert settings_table.main([]) == 0
    assert capsys.readouterr().out == settings_table.table()
    (tmp_path / "none.md").write_text("no block\n", encoding="utf-8")
    assert settings_table.main(["--check", str(tmp_path / "none.md")]) == 2


def _example_keys(text: str) -> dict[str, bool]:
    """Every key the example file names, commented out or not: dotted key -> whether the
    line is active. ``[chargers.X]`` tables count as ``chargers.<identity>``."""
    keys: dict[str, bool] = {}
    section = ""
    for line in text.splitlines():
        body = line.lstrip()
        commented = body.startswith("#")
        body = body.lstrip("#").strip()
        table = re.match(r"^\[([A-Za-z0-9_.\-]+)\]", body)
        if table:
            parts = table.group(1).split(".")
            if parts[0] == "chargers" and len(parts) > 1:
                parts[1] = "<identity>"
            section = ".".join(parts)
            continue
        key = re.match(r"^([a-z_]+)\s*=", body)
        if key and section:
            keys[f"{section}.{key.group(1)}"] = not commented
    return keys


def test_example_settings_name_every_key_and_no_other() -> None:
    """config/examples/site.toml names every key of the model (commented-out keys count),
    and no key the model does not have."""
    model = {r.key for r in settings_table.rows()}
    example = set(_example_keys(SITE_TOML.read_text(encoding="utf-8")))
    assert sorted(model - example) == [], "keys missing from site.toml"
    assert sorted(example - model) == [], "keys in site.toml the model does not have"


def _default(key: str) -> Any:
    value: Any = Settings.model_construct()
    for part in key.split("."):
        value = getattr(value, part)
    return value


def test_example_settings_show_the_defaults() -> None:
    """The example loads, and every active key in it has the model's default (the file
    says so), except a line marked as an example value."""
    load_settings(SITE_TOML)
    text = SITE_TOML.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    examples = {m.group(1) for m in re.finditer(r"^([a-z_]+)\s*=.*#\s*example value", text, re.M)}
    for key, active in _example_keys(text).items():
        name = key.rsplit(".", 1)[1]
        if not active or name in examples:
            continue
        value: Any = data
        for part in key.split("."):
            value = value[part]
        default = _default(key)
        if isinstance(default, Path):
            default = str(default)
        assert value == default, f"{key} = {value!r} in site.toml, default {default!r}"


def test_example_site_list_is_a_valid_site_list() -> None:
    """config/examples/cards.csv, named in site.toml, imports as the CSV import reads it."""
    from policies.local_list import parse_csv

    cards = REPO / "config" / "examples" / "cards.csv"
    entries = parse_csv(cards.read_text(encoding="utf-8"))
    assert len(entries) == len(cards.read_text(encoding="utf-8").splitlines()) - 1
    assert "cards.csv" in SITE_TOML.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- docs


def _log_events() -> set[str]:
    """Event names the service logs: log calls with a constant event, security events,
    and the router's notes (every one becomes a log line)."""
    events: set[str] = set()
    name = re.compile(r"^[a-z][a-z0-9_]+$")
    for path in sorted((REPO / "proxy").rglob("*.py")) + sorted((REPO / "config").rglob("*.py")):
        if "demo" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            args = node.args
            candidate: ast.expr | None = None
            if isinstance(func, ast.Attribute):
                owner = ast.unparse(func.value)
                logs = func.attr in ("debug", "info", "warning", "error", "exception")
                if (logs and owner.endswith("log")) or func.attr == "security_event":
                    candidate = args[0] if args else None
                elif func.attr == "_refuse" and len(args) > 1:
                    candidate = args[1]
            elif isinstance(func, ast.Name) and func.id == "Note" and args:
                candidate = args[0]
            if (
                isinstance(candidate, ast.Constant)
                and isinstance(candidate.value, str)
                and name.match(candidate.value)
            ):
                events.add(candidate.value)
    return events


def test_operating_guide_lists_every_log_event() -> None:
    """docs/operating.md names every event the service logs."""
    events = _log_events()
    assert {"controller_started", "uplink_lost", "replay_done", "charger_bad_frame"} <= events
    assert {"unknown_identity", "security_event"} <= events
    doc = (DOCS / "operating.md").read_text(encoding="utf-8")
    assert sorted(e for e in events if f"`{e}`" not in doc) == []


def test_operating_guide_lists_every_metric() -> None:
    """docs/operating.md names every metric family /metrics exports."""
    metrics = Metrics()
    metrics.bind_state(lambda: {"connected": 1, "uplinks": {"online": 1}})
    for counter in (
        metrics.forwarded,
        metrics.replayed,
        metrics.auth_decisions,
    ):
        counter["a", "b"] += 1
    for single in (
        metrics.offline_answers,
        metrics.policy_actions,
        metrics.security_events,
        metrics.notes,
    ):
        single["a"] += 1
    text = generate_latest(metrics.registry).decode()
    families = {
        name
        for name in re.findall(r"^# TYPE (\S+) ", text, re.M)
        if not name.endswith("_created")  # a histogram's creation time, added by the client
    }
    assert len(families) >= 14
    doc = (DOCS / "operating.md").read_text(encoding="utf-8")
    assert sorted(f for f in families if f"`{f}" not in doc) == []


def _table_rows(text: str) -> Iterator[list[str]]:
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            yield [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_ocpp_doc_error_codes_are_the_dialects() -> None:
    """docs/ocpp.md's CALLERROR table is each version's table in proxy/versions/."""
    doc = (DOCS / "ocpp.md").read_text(encoding="utf-8")
    rows = {row[1].strip("`"): row[2:5] for row in _table_rows(doc) if len(row) == 5}
    for kind in ErrorKind:
        assert kind.value in rows, f"no row for {kind.value}"
        expected = [
            dialect.error_codes[kind] or "(ignored, no answer)"
            for dialect in (ocpp16.DIALECT, ocpp201.DIALECT, ocpp201.DIALECT_21)
        ]
        assert rows[kind.value] == expected, kind.value


def test_offline_doc_lists_every_offline_answer() -> None:
    """docs/offline.md has a row for every action the offline responder answers."""
    doc = (DOCS / "offline.md").read_text(encoding="utf-8")
    v16, v201 = doc.split("### OCPP 1.6", 1)[1].split("### OCPP 2.0.1", 1)
    for table, section in ((OCPP16, v16), (OCPP201, v201)):
        listed = {row[0].strip("`") for row in _table_rows(section)}
        assert sorted(set(table) - listed) == []
        assert sorted(listed - set(table) - {"action", "anything else"}) == []


def test_documents_keep_the_set_up_commands_and_their_links() -> None:
    """The README keeps its two set-up commands word for word, its quick start is short,
    and every relative link in the README and docs/ leads to a file."""
    readme = README.read_text(encoding="utf-8")
    assert (
        "python3.11 -m venv .venv && .venv/bin/pip install . && "
        "OCPP_LC_CSMS__URL=ws://csms.example.com/ocpp .venv/bin/ocpp-lc serve "
        "--config config/examples/site.toml\n"
    ) in readme
    assert (
        "python3.11 -m venv .venv && .venv/bin/pip install '.[test]' && "
        ".venv/bin/python -m pytest --cov\n"
    ) in readme
    quick = readme.split("## Quick start", 1)[1].split("\nRun the tests", 1)[0]
    assert len([line for line in quick.splitlines() if line.strip()]) < 10
    for doc in [README, *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


# --------------------------------------------------------------------------- demo


def test_service_does_not_import_the_demo() -> None:
    """Importing the service's modules (and the command line) loads no proxy.demo module;
    the demo itself loads."""
    code = (
        "import sys, proxy.app, proxy.session, proxy.charger, proxy.cli\n"
        "print(sorted(m for m in sys.modules if m.startswith('proxy.demo')))\n"
        "import proxy.demo.run\n"
        "print('proxy.demo.run' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split("\n")[:2] == ["[]", "True"]


def _call(message_id: str, action: str, payload: dict[str, Any], ok: bool = True) -> Exchange:
    return Exchange(message_id, action, payload, "result" if ok else "error", {})


def test_demo_figures_compare_chargers_with_the_csms() -> None:
    """Stored = acked by the controller (the CSMS never answered that id); replayed =
    those the CSMS answered later under another id; lost = acked, never answered by the
    CSMS; a transaction id the CSMS did not assign is counted."""
    start = {"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": "t0"}
    meter = [
        {"connectorId": 1, "transactionId": 7, "meterValue": [{"timestamp": f"t{i}"}]}
        for i in range(3)
    ]
    stop = {"transactionId": 7, "meterStop": 30, "timestamp": "t9"}
    charger = [
        _call("c1", "StartTransaction", start),
        _call("c2", "MeterValues", meter[0]),
        _call("c3", "MeterValues", meter[1]),  # offline
        _call("c4", "MeterValues", meter[2]),  # offline, never delivered
        _call("c5", "StopTransaction", stop, ok=False),  # refused: not acked
        _call("c6", "Heartbeat", {}),
    ]
    csms = [
        _call("c1", "StartTransaction", start),
        _call("c2", "MeterValues", meter[0]),
        _call("lc-1", "MeterValues", dict(meter[1], transactionId=2_000_000_000)),
        _call("lc-2", "MeterValues", dict(meter[1], transactionId=7)),  # a duplicate
    ]
    result = figures({"CP": charger}, {"CP": csms}, {"CP": {7}})
    assert (result.acked, result.stored, result.replayed, result.lost) == (4, 2, 1, 1)
    assert (result.duplicates, result.foreign_ids, result.out_of_order) == (1, 1, 0)
    assert result.summary() == "demo: 1 chargers, 2 messages stored offline, 1 replayed, lost = 1"
    in_order = figures({"CP": charger[:3]}, {"CP": csms[:3]}, {"CP": {7, 2_000_000_000}})
    assert (in_order.lost, in_order.foreign_ids, in_order.replayed) == (0, 0, 1)
    swapped = figures({"CP": charger[:3]}, {"CP": [csms[0], csms[2], csms[1]]}, {"CP": {7}})
    assert swapped.out_of_order == 1


def _ocpp_lc() -> list[str]:
    script = Path(sys.executable).with_name("ocpp-lc")
    return [str(script)] if script.exists() else [sys.executable, "-m", "proxy"]


def test_demo_runs_an_outage_and_loses_nothing(tmp_path: Path) -> None:
    """``ocpp-lc demo --chargers 3 --outage 3`` stores messages while the CSMS is down,
    replays them all, prints the status page URL and ``lost = 0``, and exits 0."""
    started = time.monotonic()
    done = subprocess.run(
        [*_ocpp_lc(), "demo", "--chargers", "3", "--outage", "3"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(re.match(r"demo: status page: http://127\.0\.0\.1:\d+/$", line) for line in lines)
    assert any("uplink cut" in line for line in lines)
    assert any("offline:" in line and "StartTransaction" in line for line in lines)
    assert any("uplink restored" in line for line in lines)
    summary = re.fullmatch(
        r"demo: 3 chargers, (\d+) messages stored offline, (\d+) replayed, lost = 0", lines[-1]
    )
    assert summary is not None, lines[-1]
    stored, replayed = int(summary.group(1)), int(summary.group(2))
    assert stored > 0
    assert replayed == stored
    assert elapsed < 30


async def test_demo_in_process_with_a_kept_store(tmp_path: Path) -> None:
    """The demonstration's script run in this process, its store kept with ``--store``:
    two chargers, a short outage, every outbox drained, nothing lost, and the store file
    left behind with an empty outbox."""
    lines: list[str] = []
    store = tmp_path / "demo.sqlite3"
    options = Options(chargers=2, outage=1.5, online=1.0, store=store)
    code = await asyncio.wait_for(demonstrate(options, lines.append), timeout=60)
    assert code == 0, "\n".join(lines)
    assert lines[-1].startswith("demo: 2 chargers, ") and lines[-1].endswith(", lost = 0")
    assert f"demo: store: {store}" in lines
    assert any("done: every outbox is empty" in line for line in lines)
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone() == (0,)


def test_demo_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    """--chargers 0 and a negative outage are usage errors (exit 2)."""
    for argv in (["demo", "--chargers", "0"], ["demo", "--outage", "-1"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    assert "usage: ocpp-lc" in capsys.readouterr().err


# --------------------------------------------------------------------------- import progress


def _site_csv(rows: int, *, start: int = 0, newline: str = "\n") -> str:
    lines = ["id_tag,status,expiry,parent_id_tag"]
    lines += [
        f"CARD{i:08d},Accepted,2030-01-01T00:00:00Z,FLEET-{i % 7}" for i in range(start, rows)
    ]
    return newline.join(lines) + newline


@pytest.mark.parametrize(
    "text",
    [
        _site_csv(4500),
        _site_csv(4500, newline="\r\n"),
        "\ufeff" + _site_csv(4001),
        _site_csv(2000) + "\n\n" + _site_csv(4100, start=2000).split("\n", 1)[1].rstrip("\n"),
        _site_csv(0),
        "id_tag,status,expiry,parent_id_tag",
    ],
    ids=["lf", "crlf", "bom", "blank-lines-no-final-newline", "header-only", "no-newline"],
)
def test_chunked_parse_is_parse_csv(text: str) -> None:
    """The import with progress gives exactly the entries parse_csv gives, in order."""
    steps: list[int] = []
    entries = cli.parse_csv_with_progress(text, steps.append)
    assert list(entries.items()) == list(parse_csv(text).items())
    assert steps == sorted(steps)


@pytest.mark.parametrize(
    "text",
    [
        _site_csv(4500).replace("CARD00003000,Accepted", "CARD00003000,Sideways"),
        _site_csv(4500) + "card00000010,Accepted,,\n",
        _site_csv(4500).replace("id_tag,status", "tag,status"),
        _site_csv(4500).replace("CARD00002500,", '"CARD\n00002500",'),
        "\n\n" + _site_csv(4500),
    ],
    ids=[
        "bad-status-late",
        "duplicate-across-chunks",
        "bad-header",
        "line-break-in-field",
        "blank-start",
    ],
)
def test_chunked_parse_fails_like_parse_csv(text: str) -> None:
    """A bad file fails with parse_csv's own error and line number, or parses the same."""
    try:
        expected: dict[str, Any] | str = parse_csv(text)
    except ListFormatError as exc:
        expected = str(exc)
    try:
        got: dict[str, Any] | str = cli.parse_csv_with_progress(text, lambda _: None)
    except ListFormatError as exc:
        got = str(exc)
    assert got == expected


@pytest.fixture
def store_config(tmp_path: Path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "lc.sqlite3"}"\n', encoding="utf-8")
    return path


def test_large_import_logs_progress_lines(
    tmp_path: Path, store_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not on a terminal, a large import writes a plain line per tenth and one for the
    write; the result line is unchanged."""
    csv_file = tmp_path / "cards.csv"
    csv_file.write_text(_site_csv(12_000), encoding="utf-8")
    argv = ["local-list", "import", str(csv_file), "--config", str(store_config)]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert out == f"imported 12000 entries from {csv_file}\n"
    lines = err.splitlines()
    assert "\r" not in err
    assert lines[-1] == f"ocpp-lc: importing {csv_file}: writing 12,000 entries to the store"
    assert lines[-2] == f"ocpp-lc: importing {csv_file}: 100% (12,000 of 12,000 rows)"
    assert 5 <= len(lines) <= 11


def test_large_import_draws_a_bar_on_a_terminal(
    tmp_path: Path,
    store_config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a terminal the progress is one line rewritten with \\r, ended by a newline."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    csv_file = tmp_path / "cards.csv"
    csv_file.write_text(_site_csv(6000), encoding="utf-8")
    assert cli.main(["local-list", "import", str(csv_file), "--config", str(store_config)]) == 0
    err = terminal.getvalue()
    assert err.startswith("\r")
    assert "[##############################] 100% 6,000/6,000 rows\n" in err
    assert "writing 6,000 entries to the store" in err
    assert err.endswith("\n")
    assert capsys.readouterr().out == f"imported 6000 entries from {csv_file}\n"


def test_small_import_and_bad_file_show_no_progress(
    tmp_path: Path, store_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file of a few rows prints no progress; a bad large file prints its error with the
    line number and imports nothing."""
    small = tmp_path / "small.csv"
    small.write_text(_site_csv(10), encoding="utf-8")
    assert cli.main(["local-list", "import", str(small), "--config", str(store_config)]) == 0
    assert capsys.readouterr().err == ""
    bad = tmp_path / "bad.csv"
    bad.write_text(_site_csv(9000).replace("CARD00008000,Accepted", "CARD00008000,Nope"))
    assert cli.main(["local-list", "import", str(bad), "--config", str(store_config)]) == 1
    err = capsys.readouterr().err
    assert err.endswith(f"ocpp-lc: {bad}: line 8002: unknown status 'Nope'; nothing imported\n")


# --------------------------------------------------------------------------- packaging


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    logical = ""
    for line in dockerfile.splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        word, _, rest = logical.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        logical = ""
    return out


def _stages(dockerfile: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions(dockerfile):
        if instruction[0] == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages


DOCKERFILE = (REPO / "Dockerfile").read_text(encoding="utf-8")


def test_dockerfile_is_small_non_root_and_checks_readiness() -> None:
    """Two stages; the image runs as a non-root user, keeps /data as a volume, exposes the
    charger and admin ports, and its HEALTHCHECK asks /readyz."""
    build, final = _stages(DOCKERFILE)
    assert build[0][1].endswith(" AS build")
    assert any(i == "RUN" and "pip install" in a and "--prefix=" in a for i, a in build)
    assert ("COPY", "--from=build /install /usr/local") in final
    user = [a for i, a in final if i == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert ("VOLUME", '["/data"]') in final
    assert ("EXPOSE", "9000 9200") in final
    healthcheck = [a for i, a in final if i == "HEALTHCHECK"]
    assert len(healthcheck) == 1 and "/readyz" in healthcheck[0]
    assert ("STOPSIGNAL", "SIGTERM") in final


def test_compose_example_for_an_edge_box() -> None:
    """compose.yaml builds the image, publishes 9000 and the admin port on loopback only,
    keeps /data on a named volume, restarts, waits 15 s on stop and checks /readyz."""
    compose = (REPO / "compose.yaml").read_text(encoding="utf-8")
    for fragment in (
        "build: .",
        '"9000:9000"',
        '"127.0.0.1:9200:9200"',
        "ocpp-lc-data:/data",
        "restart: unless-stopped",
        "stop_grace_period: 15s",
        "/readyz",
        "OCPP_LC_CSMS__URL:",
        "OCPP_LC_ADMIN__TOKEN:",
        '# command: ["serve", "--config", "/etc/ocpp-lc/site.toml"]',
        "# - ./site.toml:/etc/ocpp-lc/site.toml:ro",
    ):
        assert fragment in compose, fragment


def _build_context(tmp_path: Path) -> Path:
    """The files the build stage copies, laid out as its WORKDIR (/src) would hold them."""
    build = _stages(DOCKERFILE)[0]
    context = tmp_path / "src"
    context.mkdir()
    for instruction, args in build:
        if instruction != "COPY":
            continue
        *sources, target = shlex.split(args)
        for source in sources:
            origin = REPO / source
            if origin.is_dir():
                shutil.copytree(
                    origin, context / target, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy2(origin, context / Path(target) / source)
    return context


def _image_env(data: Path) -> dict[str, str]:
    """The ENV of the image's final stage, /data mapped to ``data``."""
    env: dict[str, str] = {}
    for instruction, args in _stages(DOCKERFILE)[-1]:
        if instruction == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value.replace("/data", str(data))
    return env


@pytest.mark.timeout(300)
def test_package_installs_and_serves_from_a_fresh_venv(tmp_path: Path) -> None:
    """The Dockerfile's install steps in a fresh virtual environment: its build context,
    ``pip install .``, then ``ocpp-lc serve`` with the image's environment. The image's
    HEALTHCHECK command passes (``/readyz`` answers 200), the logs are JSON lines, and
    SIGTERM stops the service with exit code 0 within 10 s."""
    context = _build_context(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, cwd=tmp_path)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(context)],
        cwd=tmp_path,
        env=clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1"),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    where = subprocess.run(
        [
            str(python),
            "-c",
            "import proxy, importlib.resources as r; print(proxy.__file__); "
            "print(r.files('proxy').joinpath('static/status.html').is_file())",
        ],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    module, packaged = where.stdout.split()
    assert Path(module).is_relative_to(venv), module
    assert packaged == "True"

    data = tmp_path / "data"
    data.mkdir()
    admin_port = free_port()
    env = clean_env(**_image_env(data))
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        # Loopback for the test; the image binds 0.0.0.0 for the site's chargers.
        OCPP_LC_LISTEN__HOST="127.0.0.1",
        OCPP_LC_LISTEN__PORT=str(free_port()),
        OCPP_LC_ADMIN__PORT=str(admin_port),
        OCPP_LC_CSMS__URL=f"ws://127.0.0.1:{free_port()}/ocpp",
    )
    assert env["OCPP_LC_STORE__PATH"] == str(data / "ocpp-lc.sqlite3")
    healthcheck = next(a for i, a in _stages(DOCKERFILE)[-1] if i == "HEALTHCHECK")
    check_command = healthcheck.split(" CMD ", 1)[1]
    server = subprocess.Popen(
        [str(venv / "bin" / "ocpp-lc"), "serve"],
        cwd=data,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        healthy = False
        while time.monotonic() < deadline and server.poll() is None:
            check = subprocess.run(
                ["sh", "-c", check_command],
                env=env,
                capture_output=True,
                timeout=10,
                check=False,
            )
            if check.returncode == 0:
                healthy = True
                break
            time.sleep(0.2)
        assert healthy, "the HEALTHCHECK command never passed"
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=5) as r:
            assert r.status == 200
            assert json.loads(r.read())["status"] == "ready"
        stopped_at = time.monotonic()
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=10)
        assert time.monotonic() - stopped_at < 10
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.kill()
        err = server.communicate(timeout=10)[1]
    assert code == 0, err[-3000:]
    events = [json.loads(line)["event"] for line in err.splitlines() if line.strip()]
    assert events[0] != "" and "controller_started" in events
    assert events[-1] == "controller_stopped"
    assert (data / "ocpp-lc.sqlite3").is_file()
