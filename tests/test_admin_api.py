"""The admin HTTP API: chargers, outbox and dead letters, site list, cache, settings,
replay progress, access control, the OpenAPI document, and ``ocpp-lc chargers``.

The real controller runs in-process with real chargers and a real CSMS on loopback; the
API is called over HTTP with httpx.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import structlog
from ocpp.v16 import call as call16
from peers import ChargerPeer16, CsmsPeer, controller_url

from config.settings import ENV_PREFIX, SettingsError, load_settings
from policies.authorization import AuthEntry, AuthStatus
from proxy.admin import AdminExposureError, check_exposure, is_loopback
from proxy.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main
from proxy.store import OutboxItem, Store

if TYPE_CHECKING:
    from conftest import ControllerFactory

    from proxy.app import Controller

pytestmark = pytest.mark.timeout(60)

TOKEN = "adm-7Qx!token"
#: A CSMS address where nothing listens: chargers connect while the CSMS is down.
CSMS_DOWN = {"url": "ws://127.0.0.1:1"}
BOOT = call16.BootNotification(charge_point_model="LC-Test", charge_point_vendor="OpenSite")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OCPP_LC_* variable of the caller's environment leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@asynccontextmanager
async def admin(
    ctl: Controller, host: str = "127.0.0.1", **kwargs: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the controller's admin server."""
    async with httpx.AsyncClient(
        base_url=f"http://{host}:{ctl.admin_port}", timeout=5.0, trust_env=False, **kwargs
    ) as client:
        yield client


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 5.0) -> None:
    """Wait until ``check()`` holds (the controller learns from exchanges after answering)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def by_identity(chargers: list[dict[str, Any]], identity: str) -> dict[str, Any]:
    found = [c for c in chargers if c["identity"] == identity]
    assert len(found) == 1, chargers
    return found[0]


def meter_values(tx_id: int, wh: int) -> call16.MeterValues:
    return call16.MeterValues(
        connector_id=1,
        transaction_id=tx_id,
        meter_value=[
            {
                "timestamp": datetime.now(UTC).isoformat(),
                "sampled_value": [
                    {"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
                ],
            }
        ],
    )


def status(connector: int, state: str) -> call16.StatusNotification:
    return call16.StatusNotification(
        connector_id=connector,
        error_code="NoError",
        status=state,
        timestamp=datetime.now(UTC).isoformat(),
    )


async def add_dead_letters(store: Store, identity: str, count: int) -> list[int]:
    """Store ``count`` messages for ``identity`` and make them dead letters; their seqs."""
    for n in range(count):
        frame = json.dumps([2, f"m{n}", "DataTransfer", {"vendorId": "X", "n": n}])
        await store.append(OutboxItem(identity, "DataTransfer", f"m{n}", frame, None, f"dk{n}"))
    rows = await store.outbox(identity)
    for row in rows:
        await store.refused(row.seq, 3, "CALLERROR InternalError", dead=True)
    return [row.seq for row in rows]


def wait_for_session(ctl: Controller, identity: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return identity in ctl.chargers.sessions

    return check


# --------------------------------------------------------------------------- chargers


async def test_chargers_list_has_the_fixed_shape_for_an_online_charger(
    csms: CsmsPeer, controller: Controller
) -> None:
    """GET /api/chargers: a charger connected through a live CSMS is online, depth 0."""
    before = datetime.now(UTC)
    async with ChargerPeer16(controller_url(controller.listen_port), "CP-ON"):
        await eventually(wait_for_session(controller, "CP-ON"), "the session")
        async with admin(controller) as client:
            answer = await client.get("/api/chargers")
    assert answer.status_code == 200
    chargers = answer.json()
    assert isinstance(chargers, list)
    for charger in chargers:
        assert {"identity", "ocpp_version", "uplink_state", "outbox_depth"} <= charger.keys()
        assert charger["uplink_state"] in ("online", "offline", "draining")
    cp = by_identity(chargers, "CP-ON")
    assert cp["ocpp_version"] == "1.6"
    assert cp["uplink_state"] == "online"
    assert cp["outbox_depth"] == 0
    assert cp["connected"] is True
    since = datetime.fromisoformat(cp["connected_since"])
    assert before - timedelta(seconds=2) <= since <= datetime.now(UTC) + timedelta(seconds=2)


async def test_charger_connected_while_the_csms_is_down_is_offline(
    controller_factory: ControllerFactory,
) -> None:
    """GET /api/chargers: a charger connected while the CSMS is unreachable is offline."""
    ctl = await controller_factory(csms=CSMS_DOWN)
    async with ChargerPeer16(controller_url(ctl.listen_port), "CP-OFF") as charger:
        await eventually(wait_for_session(ctl, "CP-OFF"), "the session")
        await charger.call(call16.Heartbeat())
        async with admin(ctl) as client:
            chargers = (await client.get("/api/chargers")).json()
    cp = by_identity(chargers, "CP-OFF")
    assert cp["uplink_state"] == "offline"
    assert cp["connected"] is True
    assert cp["ocpp_version"] == "1.6"
    assert cp["outbox_depth"] == 0


async def test_offline_charger_detail_outbox_and_replay(
    controller_factory: ControllerFactory,
) -> None:
    """Offline: last boot, connector statuses, the running transaction with its energy, the
    outbox in order and replay progress, authorized by an entry put through the API."""
    ctl = await controller_factory(csms=CSMS_DOWN)
    async with admin(ctl) as client:
        put = await client.put("/api/local-list/card-0042", json={})
        assert put.status_code == 200, put.text
        async with ChargerPeer16(controller_url(ctl.listen_port), "CP-OFF") as charger:
            await eventually(wait_for_session(ctl, "CP-OFF"), "the session")
            boot = await charger.call(BOOT)
            assert boot.status == "Accepted"
            await charger.call(status(1, "Preparing"))
            started = await charger.call(
                call16.StartTransaction(
                    connector_id=1,
                    id_tag="CARD-0042",
                    meter_start=1000,
                    timestamp=datetime.now(UTC).isoformat(),
                )
            )
            assert started.id_tag_info["status"] == "Accepted"
            tx_id = started.transaction_id
            await charger.call(status(1, "Charging"))
            await charger.call(meter_values(tx_id, 1500))

            detail = await client.get("/api/chargers/CP-OFF")
            outbox = await client.get("/api/outbox", params={"charger": "CP-OFF"})
            first = await client.get("/api/outbox", params={"limit": 1})
            replay = await client.get("/api/replay")

    assert detail.status_code == 200
    cp = detail.json()
    assert cp["uplink_state"] == "offline"
    assert cp["outbox_depth"] == 2
    assert cp["last_boot"]["vendor"] == "OpenSite"
    assert cp["last_boot"]["model"] == "LC-Test"
    assert cp["last_boot"]["awaiting_replay"] is True
    assert cp["last_boot"]["offline_status"] == "Accepted"
    assert [(c["connector"], c["status"]) for c in cp["connectors"]] == [(1, "Charging")]
    [tx] = cp["transactions"]
    assert tx["transaction_id"] == tx_id
    assert tx["provisional"] is True
    assert tx["csms_transaction_id"] is None
    assert tx["status"] == "Accepted"
    assert (tx["meter_start_wh"], tx["meter_wh"], tx["energy_wh"]) == (1000, 1500, 500)

    page = outbox.json()
    assert page["total"] == 2
    assert [m["action"] for m in page["messages"]] == ["StartTransaction", "MeterValues"]
    assert page["messages"][0]["seq"] < page["messages"][1]["seq"]
    assert all(m["state"] == "pending" and m["identity"] == "CP-OFF" for m in page["messages"])
    assert json.loads(page["messages"][0]["frame"])[2] == "StartTransaction"
    assert first.json()["total"] == 2
    assert len(first.json()["messages"]) == 1

    assert replay.json() == [
        {
            "identity": "CP-OFF",
            "uplink_state": "offline",
            "replayed": 0,
            "left": 0,
            "outbox_depth": 2,
        }
    ]


async def test_online_charger_detail_shows_its_boot_status_and_transaction(
    csms: CsmsPeer, controller: Controller
) -> None:
    """Online: the CSMS-accepted boot, connector status, and the running transaction under
    the CSMS's id, as the controller learns them from the exchanges passing through."""
    async with ChargerPeer16(controller_url(controller.listen_port), "CP-ON") as charger:
        await charger.call(BOOT)
        await charger.call(status(1, "Charging"))
        started = await charger.call(
            call16.StartTransaction(
                connector_id=1,
                id_tag="TAG-ONLINE",
                meter_start=2000,
                timestamp=datetime.now(UTC).isoformat(),
            )
        )
        async with admin(controller) as client:

            async def learned() -> bool:
                cp = (await client.get("/api/chargers/CP-ON")).json()
                return bool(cp["last_boot"] and cp["connectors"] and cp["transactions"])

            await eventually(learned, "the controller to learn from the exchanges")
            cp = (await client.get("/api/chargers/CP-ON")).json()
    assert cp["uplink_state"] == "online"
    assert cp["last_boot"]["accepted"] is True
    assert cp["last_boot"]["awaiting_replay"] is False
    assert cp["last_boot"]["vendor"] == "OpenSite"
    assert cp["connectors"][0]["status"] == "Charging"
    [tx] = cp["transactions"]
    assert tx["transaction_id"] == started.transaction_id
    assert tx["csms_transaction_id"] == started.transaction_id
    assert tx["provisional"] is False


async def test_unknown_charger_is_404(controller: Controller) -> None:
    """GET /api/chargers/{identity} of a charger nobody knows answers 404."""
    async with admin(controller) as client:
        answer = await client.get("/api/chargers/NOPE")
    assert answer.status_code == 404


# --------------------------------------------------------------------------- dead letters


async def test_dead_letters_list_retry_and_drop(controller: Controller) -> None:
    """Dead letters are listed, retried (one, all) and dropped (one, all); each change is
    logged with who made it, and a missing seq answers 404."""
    s1, s2, s3 = await add_dead_letters(controller.store, "CP-DEAD", 3)
    async with admin(controller) as client:
        with structlog.testing.capture_logs() as logs:
            listed = (await client.get("/api/outbox/dead-letters")).json()
            charger = by_identity((await client.get("/api/chargers")).json(), "CP-DEAD")

            retried = await client.post(f"/api/outbox/dead-letters/{s1}/retry")
            again = await client.post(f"/api/outbox/dead-letters/{s1}/retry")
            pending = (await client.get("/api/outbox", params={"charger": "CP-DEAD"})).json()
            dropped = await client.delete(f"/api/outbox/dead-letters/{s2}")
            dropped_again = await client.delete(f"/api/outbox/dead-letters/{s2}")
            retried_all = await client.post("/api/outbox/dead-letters/retry")
            await add_dead_letters(controller.store, "CP-DEAD2", 2)
            dropped_all = await client.delete("/api/outbox/dead-letters")
            left = (await client.get("/api/outbox/dead-letters")).json()

    assert listed["total"] == 3
    assert [m["seq"] for m in listed["messages"]] == [s1, s2, s3]
    assert {m["state"] for m in listed["messages"]} == {"dead"}
    assert listed["messages"][0]["last_error"] == "CALLERROR InternalError"
    assert listed["messages"][0]["attempts"] == 3
    assert (charger["dead_letters"], charger["outbox_depth"]) == (3, 0)
    assert charger["connected"] is False
    assert charger["uplink_state"] == "offline"

    assert (retried.status_code, retried.json()) == (200, {"retried": 1})
    assert again.status_code == 404
    assert [(m["seq"], m["attempts"]) for m in pending["messages"]] == [(s1, 0)]
    assert (dropped.status_code, dropped.json()) == (200, {"dropped": 1})
    assert dropped_again.status_code == 404
    assert retried_all.json() == {"retried": 1}
    assert dropped_all.json() == {"dropped": 2}
    assert left == {"total": 0, "messages": []}
    assert [r.seq for r in await controller.store.outbox("CP-DEAD")] == [s1, s3]

    changes = [e for e in logs if e["event"].startswith("admin_dead_letters")]
    assert [(e["event"], e["seq"], e["count"]) for e in changes] == [
        ("admin_dead_letters_retried", s1, 1),
        ("admin_dead_letters_dropped", s2, 1),
        ("admin_dead_letters_retried", "all", 1),
        ("admin_dead_letters_dropped", "all", 2),
    ]
    assert {e["who"] for e in changes} == {"local"}


# --------------------------------------------------------------------------- site list


async def test_local_list_put_get_and_delete(controller: Controller) -> None:
    """PUT adds an entry under its upper-cased tag, GET lists it, DELETE removes it (404
    the second time); the log names who, never the tag in clear."""
    body = {"status": "Blocked", "expiry": "2030-01-01T00:00:00Z", "parent_id_tag": "FLEET-1"}
    async with admin(controller) as client:
        with structlog.testing.capture_logs() as logs:
            put = await client.put("/api/local-list/card-123456", json=body)
            listed = (await client.get("/api/local-list")).json()
            stored = await controller.store.load_site_list()
            removed = await client.delete("/api/local-list/Card-123456")
            missing = await client.delete("/api/local-list/CARD-123456")
            after = (await client.get("/api/local-list")).json()

    entry = {
        "id_tag": "CARD-123456",
        "status": "Blocked",
        "expiry": "2030-01-01T00:00:00Z",
        "parent_id_tag": "FLEET-1",
    }
    assert (put.status_code, put.json()) == (200, entry)
    assert listed == [entry]
    assert stored == {
        "CARD-123456": AuthEntry(AuthStatus.Blocked, datetime(2030, 1, 1, tzinfo=UTC), "FLEET-1")
    }
    assert (removed.status_code, removed.json()) == (200, entry)
    assert missing.status_code == 404
    assert after == []
    changes = [e for e in logs if e["event"].startswith("admin_site_list")]
    assert [e["event"] for e in changes] == ["admin_site_list_put", "admin_site_list_removed"]
    assert {e["who"] for e in changes} == {"local"}
    assert "CARD-123456" not in repr(changes)


@pytest.mark.parametrize(
    ("tag", "body"),
    [
        ("TAG-1", {"expiry": "2030-01-01T00:00:00"}),  # no UTC offset
        ("TAG-1", {"status": "Maybe"}),
        ("TAG-1", {"parent_id_tag": "P" * 21}),
        ("TAG-1", {"colour": "red"}),
        ("T" * 21, {}),
        ("TAG\u00e9", {}),
    ],
    ids=["naive-expiry", "bad-status", "long-parent", "unknown-field", "long-tag", "non-ascii"],
)
async def test_local_list_put_refuses_a_bad_entry(
    controller: Controller, tag: str, body: dict[str, Any]
) -> None:
    """PUT with a bad tag or body answers 422 and stores nothing."""
    async with admin(controller) as client:
        answer = await client.put(f"/api/local-list/{tag}", json=body)
    assert answer.status_code == 422, answer.text
    assert await controller.store.load_site_list() == {}


async def test_import_replaces_the_list(controller: Controller) -> None:
    """POST /api/local-list/import replaces the whole site list with the file's rows."""
    csv = "id_tag,status,expiry,parent_id_tag\nnew-1,,,\nNEW-2,Blocked,2031-05-01T00:00:00+02:00,\n"
    async with admin(controller) as client:
        await client.put("/api/local-list/OLD-1", json={})
        with structlog.testing.capture_logs() as logs:
            answer = await client.post(
                "/api/local-list/import", content=csv, headers={"Content-Type": "text/csv"}
            )
        listed = (await client.get("/api/local-list")).json()
    assert (answer.status_code, answer.json()) == (200, {"imported": 2})
    assert [(e["id_tag"], e["status"]) for e in listed] == [
        ("NEW-1", "Accepted"),
        ("NEW-2", "Blocked"),
    ]
    assert datetime.fromisoformat(listed[1]["expiry"]) == datetime(2031, 4, 30, 22, tzinfo=UTC)
    assert [(e["event"], e["who"], e["entries"]) for e in logs] == [
        ("admin_site_list_imported", "local", 2)
    ]


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        (b"id_tag,status,expiry,parent_id_tag\nA-1,,,\nA-2,Maybe,,\n", 3, "unknown status"),
        (b"id_tag,status,expiry,parent_id_tag\nA-1,,2030-01-01T00:00:00,\n", 2, "UTC offset"),
        (b"id_tag,status,expiry,parent_id_tag\nA-1,,,\n\nA-2,,\n", 4, "columns"),
        (b"id_tag,status,expiry,parent_id_tag\nA-1,,,\na-1,,,\n", 3, "duplicate"),
        (b"id,status\n", 1, "header"),
        (b"id_tag,status,expiry,parent_id_tag\nA-1,,,\nA-\xff,,,\n", 3, "UTF-8"),
    ],
    ids=["bad-status", "naive-expiry", "columns", "duplicate", "header", "not-utf8"],
)
async def test_import_error_reports_its_line_and_changes_nothing(
    controller: Controller, body: bytes, line: int, fragment: str
) -> None:
    """A malformed row answers 422 with its line number; the list stays as it was."""
    async with admin(controller) as client:
        await client.put("/api/local-list/KEEP-1", json={})
        await client.put("/api/local-list/KEEP-2", json={"status": "Blocked"})
        before = (await client.get("/api/local-list")).json()
        answer = await client.post(
            "/api/local-list/import", content=body, headers={"Content-Type": "text/csv"}
        )
        after = (await client.get("/api/local-list")).json()
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert detail["line"] == line
    assert fragment in detail["message"]
    assert "nothing imported" in detail["message"]
    assert after == before
    assert [e["id_tag"] for e in after] == ["KEEP-1", "KEEP-2"]


async def test_import_needs_a_text_body(controller: Controller) -> None:
    """An import sent as JSON answers 415 and changes nothing."""
    async with admin(controller) as client:
        answer = await client.post("/api/local-list/import", json={"id_tag": "X"})
    assert answer.status_code == 415
    assert await controller.store.load_site_list() == {}


# --------------------------------------------------------------------------- cache


async def test_cache_list_and_clear(controller: Controller) -> None:
    """GET /api/cache lists the cache by key; DELETE empties it and says how many."""
    expiry = datetime(2030, 6, 1, tzinfo=UTC)
    await controller.store.cache_put("TAG-C", AuthEntry(AuthStatus.Accepted, expiry))
    await controller.store.cache_put("ISO14443:ABCD", AuthEntry(AuthStatus.Blocked))
    async with admin(controller) as client:
        listed = (await client.get("/api/cache")).json()
        with structlog.testing.capture_logs() as logs:
            cleared = await client.delete("/api/cache")
        after = (await client.get("/api/cache")).json()
    assert listed == [
        {"key": "ISO14443:ABCD", "status": "Blocked", "expiry": None, "parent_id_tag": None},
        {
            "key": "TAG-C",
            "status": "Accepted",
            "expiry": "2030-06-01T00:00:00Z",
            "parent_id_tag": None,
        },
    ]
    assert (cleared.status_code, cleared.json()) == (200, {"cleared": 2})
    assert after == []
    assert await controller.store.load_cache() == {}
    assert [(e["event"], e["who"], e["count"]) for e in logs] == [
        ("admin_cache_cleared", "local", 2)
    ]


# --------------------------------------------------------------------------- settings


async def test_settings_are_shown_with_secrets_masked(
    controller_factory: ControllerFactory, csms: CsmsPeer
) -> None:
    """GET /api/settings: the effective settings; the token and a URL password masked."""
    url = csms.url.replace("ws://", "ws://site:pw-Secret9@")
    ctl = await controller_factory(admin={"token": TOKEN}, csms={"url": url})
    async with admin(ctl) as client:
        answer = await client.get("/api/settings")
    assert answer.status_code == 200
    settings = answer.json()
    assert settings["admin"]["token"] == "********"
    assert settings["csms"]["url"] == csms.url.replace("ws://", "ws://site:********@")
    assert settings["store"]["path"] == str(ctl.settings.store.path)
    assert settings["listen"]["host"] == "127.0.0.1"
    assert settings["policy"]["allow_offline_tx_for_unknown_id"] is False
    assert TOKEN not in answer.text
    assert "pw-Secret9" not in answer.text


# --------------------------------------------------------------------------- OpenAPI


async def test_openapi_document_describes_every_endpoint(controller: Controller) -> None:
    """/openapi.json lists every endpoint with its methods and the chargers' fixed shape."""
    async with admin(controller) as client:
        answer = await client.get("/openapi.json")
    assert answer.status_code == 200
    doc = answer.json()
    methods = {path: set(ops) for path, ops in doc["paths"].items()}
    assert methods == {
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
        "/": {"get"},
        "/api/chargers": {"get"},
        "/api/chargers/{identity}": {"get"},
        "/api/replay": {"get"},
        "/api/outbox": {"get"},
        "/api/outbox/dead-letters": {"get", "delete"},
        "/api/outbox/dead-letters/retry": {"post"},
        "/api/outbox/dead-letters/{seq}/retry": {"post"},
        "/api/outbox/dead-letters/{seq}": {"delete"},
        "/api/local-list": {"get"},
        "/api/local-list/import": {"post"},
        "/api/local-list/{id_tag}": {"put", "delete"},
        "/api/cache": {"get", "delete"},
        "/api/settings": {"get"},
    }
    listed = doc["paths"]["/api/chargers"]["get"]["responses"]["200"]["content"]
    items = listed["application/json"]["schema"]["items"]["$ref"]
    summary = doc["components"]["schemas"][items.rsplit("/", 1)[1]]
    assert {"identity", "ocpp_version", "uplink_state", "outbox_depth"} <= set(summary["required"])
    assert summary["properties"]["uplink_state"]["enum"] == ["online", "offline", "draining"]
    upload = doc["paths"]["/api/local-list/import"]["post"]["requestBody"]["content"]
    assert "text/csv" in upload
    assert {"token", "basic"} <= doc["components"]["securitySchemes"].keys()


# --------------------------------------------------------------------------- access


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("127.0.0.2", False),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
    ],
)
def test_loopback_rule(host: str, loopback: bool) -> None:
    """Only 127.0.0.1, ::1 and localhost count as loopback for the admin server."""
    assert is_loopback(host) is loopback


def test_a_non_loopback_bind_without_a_token_is_refused(tmp_path: Path) -> None:
    """The controller refuses to start with the admin server beyond loopback and no token;
    with a token, or on loopback, it does not."""
    from proxy.app import Controller

    settings = load_settings(None, admin={"host": "0.0.0.0"}, store={"path": tmp_path / "s"})
    with pytest.raises(AdminExposureError, match=r"admin\.token") as refused:
        Controller(settings)
    assert isinstance(refused.value, SettingsError)
    check_exposure(load_settings(None, admin={"host": "0.0.0.0", "token": TOKEN}).admin)
    check_exposure(load_settings(None, admin={"host": "127.0.0.1"}).admin)
    with pytest.raises(AdminExposureError):
        check_exposure(load_settings(None, admin={"host": "10.0.0.5", "token": ""}).admin)


def _concrete(path: str) -> str:
    return path.replace("{identity}", "CP-X").replace("{seq}", "1").replace("{id_tag}", "TAG-X")


async def test_a_non_loopback_bind_requires_the_token(
    controller_factory: ControllerFactory,
) -> None:
    """Bound to 127.0.0.2, every endpoint but /healthz and /readyz answers 401 without the
    token or with a wrong one, and works with Bearer or Basic; the page takes ?token=."""
    ctl = await controller_factory(admin={"host": "127.0.0.2", "token": TOKEN})
    good_basic = base64.b64encode(f"alice:{TOKEN}".encode()).decode()
    bad_basic = base64.b64encode(b"alice:wrong").decode()
    async with admin(ctl, host="127.0.0.2") as client:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        doc = (await client.get("/openapi.json", headers=bearer)).json()
        routes = [(m.upper(), p) for p, ops in doc["paths"].items() for m in ops]
        routes += [("GET", "/openapi.json"), ("GET", "/docs")]
        assert len(routes) >= 20
        for method, path in routes:
            url = _concrete(path)
            body = {"json": {}} if method == "PUT" else {}
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Basic {bad_basic}"},
            ):
                answer = await client.request(method, url, headers=headers, **body)
                if path in ("/healthz", "/readyz"):
                    assert answer.status_code == 200, (method, path)
                else:
                    assert answer.status_code == 401, (method, path, headers)
                    assert "Basic" in answer.headers["WWW-Authenticate"]

        assert (await client.get("/api/chargers", headers=bearer)).status_code == 200
        basic = {"Authorization": f"Basic {good_basic}"}
        assert (await client.get("/api/chargers", headers=basic)).status_code == 200
        assert (await client.get("/metrics", headers=bearer)).status_code == 200
        assert (await client.get("/", params={"token": TOKEN})).status_code == 200
        assert (await client.get("/", params={"token": "wrong"})).status_code == 401
        assert (await client.get("/api/chargers", params={"token": TOKEN})).status_code == 401

        with structlog.testing.capture_logs() as logs:
            await client.delete("/api/cache", headers=basic)
            await client.delete("/api/cache", headers=bearer)
    assert [e["who"] for e in logs if e["event"] == "admin_cache_cleared"] == ["alice", "token"]


# --------------------------------------------------------------------------- status page


async def test_status_page_is_self_contained(controller: Controller) -> None:
    """GET / serves an HTML page for phones that loads nothing from elsewhere and polls
    the chargers and dead letters every 2-5 s."""
    async with admin(controller) as client:
        answer = await client.get("/")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    page = answer.text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page
    assert "api/chargers" in page
    assert "api/outbox/dead-letters" in page
    period = re.search(r"PERIOD_MS = (\d+);", page)
    assert period is not None
    assert 2000 <= int(period.group(1)) <= 5000
    policy = answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'sha256-" in policy
    assert answer.headers["Referrer-Policy"] == "no-referrer"


# --------------------------------------------------------------------------- CLI


def free_port() -> int:
    """A loopback TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def cli_config(
    tmp_path: Path, store: Path, port: int, host: str = "127.0.0.1", token: str = ""
) -> Path:
    path = tmp_path / "cli.toml"
    text = f'[admin]\nhost = "{host}"\nport = {port}\n'
    if token:
        text += f'token = "{token}"\n'
    text += f'[store]\npath = "{store}"\n'
    path.write_text(text)
    return path


async def test_cli_chargers_lists_from_the_admin_api(
    csms: CsmsPeer, controller: Controller, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ocpp-lc chargers`` prints the API's chargers as a table, or as JSON with --json."""
    config = cli_config(tmp_path, controller.settings.store.path, controller.admin_port)
    async with ChargerPeer16(controller_url(controller.listen_port), "CP-CLI"):
        await eventually(wait_for_session(controller, "CP-CLI"), "the session")
        capsys.readouterr()
        with structlog.testing.capture_logs():
            code_json = await asyncio.to_thread(
                main, ["chargers", "--config", str(config), "--json"]
            )
            listed = json.loads(capsys.readouterr().out)
            code_table = await asyncio.to_thread(main, ["chargers", "--config", str(config)])
            out, err = capsys.readouterr()
    assert code_json == code_table == EXIT_OK
    cp = by_identity(listed, "CP-CLI")
    assert (cp["uplink_state"], cp["ocpp_version"], cp["outbox_depth"]) == ("online", "1.6", 0)
    header, *rows = out.splitlines()
    assert header.split()[:5] == ["IDENTITY", "OCPP", "UPLINK", "OUTBOX", "DEAD"]
    assert [r.split()[:5] for r in rows] == [["CP-CLI", "1.6", "online", "0", "0"]]
    assert err == ""


async def test_cli_chargers_with_a_wrong_token_fails(
    controller_factory: ControllerFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ocpp-lc chargers`` exits 1 when the admin API refuses its token, and 0 with the
    right one."""
    ctl = await controller_factory(admin={"host": "127.0.0.2", "token": TOKEN})
    store = ctl.settings.store.path
    wrong = cli_config(tmp_path, store, ctl.admin_port, host="127.0.0.2", token="nope")
    capsys.readouterr()
    with structlog.testing.capture_logs():
        code = await asyncio.to_thread(main, ["chargers", "--config", str(wrong)])
        out, err = capsys.readouterr()
    assert code == EXIT_FAILURE
    assert "HTTP 401" in err
    assert out == ""
    right = cli_config(tmp_path, store, ctl.admin_port, host="127.0.0.2", token=TOKEN)
    assert await asyncio.to_thread(main, ["chargers", "--config", str(right)]) == EXIT_OK


def test_cli_chargers_falls_back_to_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no admin API answering, ``ocpp-lc chargers`` lists the store's chargers and
    outbox depths, says so on stderr, and exits 0."""
    path = tmp_path / "lc.sqlite3"

    async def prepare() -> None:
        store = Store(path)
        await store.open()
        try:
            await store.record_boot("CP-S", "ocpp1.6", "[]", replay=False, accepted=True)
            frame = json.dumps([2, "m1", "MeterValues", {}])
            await store.append(OutboxItem("CP-S", "MeterValues", "m1", frame, None, "d1"))
            await store.append(OutboxItem("CP-T", "MeterValues", "m2", frame, None, "d2"))
        finally:
            await store.close()

    asyncio.run(prepare())
    config = cli_config(tmp_path, path, free_port())
    code = main(["chargers", "--config", str(config), "--json"])
    out, err = capsys.readouterr()
    assert code == EXIT_OK
    assert "not reachable" in err
    assert json.loads(out) == [
        {
            "identity": "CP-S",
            "ocpp_version": "1.6",
            "uplink_state": None,
            "connected": None,
            "connected_since": None,
            "outbox_depth": 1,
            "dead_letters": 0,
        },
        {
            "identity": "CP-T",
            "ocpp_version": None,
            "uplink_state": None,
            "connected": None,
            "connected_since": None,
            "outbox_depth": 1,
            "dead_letters": 0,
        },
    ]
    assert main(["chargers", "--config", str(config)]) == EXIT_OK
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split() for r in rows] == [
        ["CP-S", "1.6", "?", "1", "0", "-"],
        ["CP-T", "?", "?", "1", "0", "-"],
    ]


def test_cli_chargers_without_api_or_store_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No admin API and no store file: exit 1 with one line on stderr, no store created."""
    missing = tmp_path / "none.sqlite3"
    config = cli_config(tmp_path, missing, free_port())
    assert main(["chargers", "--config", str(config)]) == EXIT_FAILURE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert "no store" in err
    assert not missing.exists()


def test_cli_chargers_help_and_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``chargers --help`` documents --config, --json and the exit codes; a missing
    settings file or an unknown option exits 2."""
    with pytest.raises(SystemExit) as shown:
        main(["chargers", "--help"])
    assert shown.value.code == 0
    text = capsys.readouterr().out
    assert "--config FILE" in text
    assert "--json" in text
    assert "Exit codes: 0" in " ".join(text.split())
    assert main(["chargers", "--config", str(tmp_path / "nope.toml")]) == EXIT_USAGE
    with pytest.raises(SystemExit) as bad:
        main(["chargers", "--frobnicate"])
    assert bad.value.code == EXIT_USAGE


def test_check_config_refuses_an_exposed_admin_server_without_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config reports an admin server bound beyond loopback without a token (exit
    2), and accepts it with a token."""
    path = tmp_path / "site.toml"
    path.write_text('[admin]\nhost = "0.0.0.0"\n')
    assert main(["check-config", str(path)]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert "admin.token" in err
    path.write_text(f'[admin]\nhost = "0.0.0.0"\ntoken = "{TOKEN}"\n')
    assert main(["check-config", str(path)]) == EXIT_OK
