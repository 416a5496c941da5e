"""The site list file named by ``[local_list] path``, imported at each start.

A file that is malformed, not UTF-8, missing or unreadable, or a store that cannot take
it, must not keep the site from running: the controller starts on the site list its
store already holds, logs ``site_list_import_failed``, counts it as the security event of
that name and shows it in ``/readyz``. The real controller runs in-process (and once as
``python -m proxy serve``) with real chargers on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import structlog
from peers import ChargerPeer16, controller_url

from policies.authorization import AuthEntry, AuthStatus
from proxy.store import Store

if TYPE_CHECKING:
    from conftest import ControllerFactory

    from proxy.app import Controller

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
HEADER = "id_tag,status,expiry,parent_id_tag\n"
#: A CSMS address where nothing listens: chargers connect while the CSMS is down.
CSMS_DOWN = {"url": "ws://127.0.0.1:1"}
FAILED_METRIC = 'ocpp_lc_security_events_total{event="site_list_import_failed"} 1.0'


async def seed_store(path: Path, *tags: str) -> None:
    """A store whose site list holds ``tags``, Accepted (what an earlier start imported)."""
    store = Store(path)
    await store.open()
    try:
        await store.replace_site_list({tag: AuthEntry(AuthStatus.Accepted) for tag in tags})
    finally:
        await store.close()


async def admin_get(ctl: Controller, path: str) -> httpx.Response:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{ctl.admin_port}", timeout=5.0, trust_env=False
    ) as client:
        return await client.get(path)


def _malformed(tmp_path: Path) -> Path:
    path = tmp_path / "site.csv"
    path.write_text(HEADER + "NEW-1,Accepted,,\nNEW-2,Maybe,,\n", encoding="utf-8")
    return path


def _not_utf8(tmp_path: Path) -> Path:
    path = tmp_path / "site.csv"
    path.write_bytes(HEADER.encode() + b"NEW-1,Accepted,,\nNEW-\xe92,Accepted,,\n")
    return path


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "nowhere" / "site.csv"


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "site.csv"
    path.mkdir()
    return path


@pytest.mark.parametrize(
    ("make", "line", "reason"),
    [
        (_malformed, 3, "unknown status 'Maybe'"),
        (_not_utf8, 3, "not UTF-8 text"),
        (_missing, None, "cannot read the file: No such file or directory"),
        (_directory, None, "cannot read the file: Is a directory"),
    ],
    ids=["malformed-row", "not-utf8", "missing", "directory"],
)
async def test_a_bad_site_list_file_at_start_keeps_the_stored_list_and_raises_the_alarm(
    controller_factory: ControllerFactory,
    tmp_path: Path,
    make: Callable[[Path], Path],
    line: int | None,
    reason: str,
) -> None:
    """The controller starts and is ready; offline it authorizes from the list the store
    held (nothing of the bad file applied); the failure is logged with the file, line
    and reason, counted in /metrics and shown in /readyz."""
    store_path = tmp_path / "lc.sqlite3"
    await seed_store(store_path, "KEPT-1")
    bad = make(tmp_path)
    with structlog.testing.capture_logs() as logs:
        ctl = await controller_factory(
            store={"path": store_path}, local_list={"path": bad}, csms=CSMS_DOWN
        )
    assert ctl.ready()
    failed = [e for e in logs if e["event"] == "site_list_import_failed"]
    assert len(failed) == 1, logs
    assert failed[0]["log_level"] == "error"
    assert failed[0]["path"] == str(bad)
    assert failed[0]["line"] == line
    assert reason in failed[0]["reason"]
    assert failed[0]["kept"] == 1
    assert not any(e["event"] == "site_list_imported" for e in logs)

    assert set(await ctl.store.load_site_list()) == {"KEPT-1"}
    async with ChargerPeer16(controller_url(ctl.listen_port), "CP-1") as charger:
        assert await charger.authorize("KEPT-1") == "Accepted"
        assert await charger.authorize("NEW-1") == "Invalid"

    ready = await admin_get(ctl, "/readyz")
    assert ready.status_code == 200
    assert ready.json()["site_list_import"] == "failed"
    assert FAILED_METRIC in (await admin_get(ctl, "/metrics")).text


async def test_a_site_list_file_the_store_cannot_take_at_start_keeps_the_stored_list(
    controller_factory: ControllerFactory, tmp_path: Path
) -> None:
    """Another process holding the store's write lock past busy_timeout while the file is
    imported: the controller starts on the list it held, the failure logged."""
    store_path = tmp_path / "lc.sqlite3"
    await seed_store(store_path, "KEPT-1")
    good = tmp_path / "site.csv"
    good.write_text(HEADER + "NEW-1,Accepted,,\n", encoding="utf-8")
    holder = sqlite3.connect(store_path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with structlog.testing.capture_logs() as logs:
            ctl = await controller_factory(
                store={"path": store_path, "busy_timeout_ms": 100}, local_list={"path": good}
            )
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    assert ctl.ready()
    failed = [e for e in logs if e["event"] == "site_list_import_failed"]
    assert len(failed) == 1, logs
    assert "database is locked" in failed[0]["reason"]
    assert failed[0]["line"] is None
    assert set(await ctl.store.load_site_list()) == {"KEPT-1"}
    assert (await admin_get(ctl, "/readyz")).json()["site_list_import"] == "failed"
    assert FAILED_METRIC in (await admin_get(ctl, "/metrics")).text


async def test_readyz_shows_how_the_site_list_import_went(
    controller_factory: ControllerFactory, tmp_path: Path
) -> None:
    """A good file is imported (replacing the stored list) and /readyz says so; with no
    file named it says not_set; no alarm either way."""
    store_path = tmp_path / "lc.sqlite3"
    await seed_store(store_path, "OLD-1")
    good = tmp_path / "site.csv"
    good.write_text(HEADER + "NEW-1,Accepted,,\n", encoding="utf-8")
    imported = await controller_factory(store={"path": store_path}, local_list={"path": good})
    unset = await controller_factory()
    assert set(await imported.store.load_site_list()) == {"NEW-1"}
    for ctl, expected in ((imported, "imported"), (unset, "not_set")):
        ready = await admin_get(ctl, "/readyz")
        assert ready.json() == {"status": "ready", "chargers": 0, "site_list_import": expected}
        assert "site_list_import_failed" not in (await admin_get(ctl, "/metrics")).text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _readyz(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return dict(json.loads(answer.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def test_serve_starts_with_a_malformed_site_list_file(tmp_path: Path) -> None:
    """``ocpp-lc serve`` with a malformed file at ``[local_list] path``: the process starts
    and is ready (pass-through and the stored list in service), one JSON error line names
    the file, the line and the reason, and SIGTERM stops it cleanly."""
    bad = _malformed(tmp_path)
    admin_port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.upper().startswith("OCPP_LC_")},
        "OCPP_LC_LISTEN__HOST": "127.0.0.1",
        "OCPP_LC_LISTEN__PORT": str(_free_port()),
        "OCPP_LC_ADMIN__PORT": str(admin_port),
        "OCPP_LC_STORE__PATH": str(tmp_path / "lc.sqlite3"),
        "OCPP_LC_LOCAL_LIST__PATH": str(bad),
        "OCPP_LC_LOG__FORMAT": "json",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        ready = None
        while ready is None and process.poll() is None and time.monotonic() < deadline:
            ready = _readyz(admin_port)
            if ready is None:
                time.sleep(0.1)
        assert ready == {"status": "ready", "chargers": 0, "site_list_import": "failed"}
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "Traceback" not in err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    failed = [e for e in events if e["event"] == "site_list_import_failed"]
    assert len(failed) == 1, err
    assert failed[0]["level"] == "error"
    assert (failed[0]["path"], failed[0]["line"]) == (str(bad), 3)
    assert failed[0]["reason"] == "unknown status 'Maybe'"
    assert any(e["event"] == "controller_started" for e in events)
