"""The admin HTTP server: health, readiness, metrics, the operator's API and status page.

FastAPI describes every endpoint in an OpenAPI document (``/openapi.json``, browsable at
``/docs``); uvicorn serves it on the admin port, inside the controller's event loop.

Endpoints (JSON unless said otherwise):

* ``GET /healthz``, ``GET /readyz``: liveness and readiness, never behind a token.
* ``GET /metrics``: Prometheus metrics (text).
* ``GET /``: the status page (HTML, no external resources), refreshing by itself.
* ``GET /api/chargers`` and ``GET /api/chargers/{identity}``: connected and registered
  chargers; ``GET /api/replay``: replay progress of the connected chargers.
* ``GET /api/outbox``, ``GET /api/outbox/dead-letters``,
  ``POST /api/outbox/dead-letters/retry``, ``POST /api/outbox/dead-letters/{seq}/retry``,
  ``DELETE /api/outbox/dead-letters``, ``DELETE /api/outbox/dead-letters/{seq}``.
* ``GET /api/local-list``, ``PUT|DELETE /api/local-list/{id_tag}``,
  ``POST /api/local-list/import`` (a CSV body replaces the site list, all rows or none).
* ``GET /api/cache``, ``DELETE /api/cache``: the site authorization cache.
* ``GET /api/settings``: the effective settings, secrets masked.

Access: ``admin.host`` is loopback by default. Only ``127.0.0.1``, ``::1`` and
``localhost`` count as loopback. Bound to any other address, every endpoint except
``/healthz`` and ``/readyz`` requires ``Authorization: Bearer <admin.token>`` or HTTP
Basic with any user name and the token as password (the status page also takes
``?token=``), and the controller refuses to start without ``admin.token``
(:class:`AdminExposureError`, a :class:`~config.settings.SettingsError`).

Every change (site list, cache, dead letters) is logged with ``who``: the Basic user
name, ``token`` for a bearer token, ``local`` for a loopback caller without credentials.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import re
import socket
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import orjson
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import (
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretBytes,
    SecretStr,
    field_validator,
)
from pydantic_core import to_jsonable_python

from config.logging import get_logger, mask_id_tag
from config.settings import AdminSettings, Settings, SettingsError
from policies.authorization import AuthEntry, AuthStatus, is_valid_id_tag, token_key
from policies.local_list import ListFormatError, parse_csv
from proxy.store import OutboxRow, StoreError

if TYPE_CHECKING:
    from proxy.app import Controller
    from proxy.replay import Replayer
    from proxy.session import Session
    from proxy.site import Site

#: The only host names the admin server may listen on without a token.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
#: What a secret setting is shown as.
MASK = "********"
#: Largest site list CSV accepted by ``POST /api/local-list/import``.
MAX_IMPORT_BYTES = 16 * 1024 * 1024
#: Most outbox rows one request returns.
MAX_LIMIT = 10_000

_ID_TAG_MAX_LEN = 20
_REALM = "ocpp-lc admin"


# --------------------------------------------------------------------------- access


class AdminExposureError(SettingsError):
    """The admin server would listen beyond loopback without ``admin.token``."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is one of the loopback names the admin server may use freely."""
    return host.strip().strip("[]").lower() in LOOPBACK_HOSTS


def check_exposure(settings: AdminSettings) -> None:
    """Raise :class:`AdminExposureError` for a non-loopback bind without a token."""
    token = settings.token.get_secret_value() if settings.token is not None else ""
    if not is_loopback(settings.host) and not token:
        raise AdminExposureError(
            f"admin.host = {settings.host!r} is not a loopback address (127.0.0.1, ::1, "
            "localhost): set admin.token (OCPP_LC_ADMIN__TOKEN) so that the admin API asks "
            "for it, or bind admin.host to 127.0.0.1"
        )


class _Guard:
    """Checks a request's credentials against ``admin.token``."""

    def __init__(self, settings: AdminSettings) -> None:
        self.required = not is_loopback(settings.host)
        token = settings.token.get_secret_value() if settings.token is not None else ""
        self._token = token.encode() if token else None

    def _matches(self, given: str) -> bool:
        return self._token is not None and hmac.compare_digest(given.encode(), self._token)

    def who(
        self,
        bearer: HTTPAuthorizationCredentials | None,
        basic: HTTPBasicCredentials | None,
        query_token: str | None = None,
    ) -> str:
        """The caller's name for the log, or HTTP 401."""
        if bearer is not None and self._matches(bearer.credentials):
            return "token"
        if basic is not None and self._matches(basic.password):
            return basic.username[:64] or "basic"
        if query_token is not None and self._matches(query_token):
            return "token"
        if not self.required:
            return "local"
        raise HTTPException(
            status_code=401,
            detail="credentials required: Authorization: Bearer <admin.token>, "
            "or Basic with the token as password",
            headers={"WWW-Authenticate": f'Basic realm="{_REALM}", Bearer realm="{_REALM}"'},
        )


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="Authorization: Bearer <admin.token>",
)
_basic = HTTPBasic(
    auto_error=False,
    scheme_name="basic",
    realm=_REALM,
    description="HTTP Basic: any user name (logged as who made a change), admin.token as password",
)
_BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
_BasicCredentials = Annotated[HTTPBasicCredentials | None, Security(_basic)]


def _guard(request: Request) -> _Guard:
    guard: _Guard = request.app.state.guard
    return guard


async def _caller(request: Request, bearer: _BearerCredentials, basic: _BasicCredentials) -> str:
    return _guard(request).who(bearer, basic)


async def _page_caller(
    request: Request,
    bearer: _BearerCredentials,
    basic: _BasicCredentials,
    token: Annotated[
        str | None, Query(description="admin.token, for a browser that cannot send headers")
    ] = None,
) -> str:
    return _guard(request).who(bearer, basic, token)


Caller = Annotated[str, Depends(_caller)]
PageCaller = Annotated[str, Depends(_page_caller)]


# --------------------------------------------------------------------------- models

UplinkState = Literal["online", "offline", "draining"]


class ChargerSummary(BaseModel):
    """One charger: connected now, or known to the store (registered or with messages)."""

    identity: str
    ocpp_version: str | None = Field(
        description="1.6, 2.0.1 or 2.1; null for a charger the store holds messages of "
        "but that never booted"
    )
    uplink_state: UplinkState = Field(
        description="online: passing frames through; offline: answered by the controller "
        "(also for a charger that is not connected); draining: replaying its outbox"
    )
    connected: bool
    connected_since: datetime | None = Field(description="UTC; null when not connected")
    outbox_depth: int = Field(description="messages stored for the CSMS, not yet delivered")
    dead_letters: int = Field(description="messages the CSMS refused after every attempt")


class BootInfo(BaseModel):
    """The charger's last BootNotification."""

    at: datetime | None
    accepted: bool = Field(description="a CSMS has accepted the charger at least once")
    awaiting_replay: bool = Field(description="sent while offline, not yet replayed")
    offline_status: str | None = Field(
        description="the status the controller answered offline on this connection"
    )
    vendor: str | None
    model: str | None
    firmware_version: str | None


class ConnectorInfo(BaseModel):
    """The last StatusNotification of one connector."""

    connector: int
    status: str | None
    updated: datetime | None
    awaiting_replay: bool


class RunningTransaction(BaseModel):
    """A transaction that has not stopped."""

    transaction_id: int | str = Field(description="the id the charger uses")
    csms_transaction_id: int | str | None = Field(
        description="the id the CSMS knows; for a provisional id, null until replayed"
    )
    connector: int | None
    provisional: bool = Field(
        description="an OCPP 1.6 transactionId the controller handed out while offline"
    )
    status: str | None = Field(description="authorization answered offline")
    meter_start_wh: float | None
    meter_wh: float | None = Field(
        description="last energy register reading the controller saw (offline, replayed, "
        "or watched for an energy limit); online readings pass through unread"
    )
    energy_wh: float | None = Field(description="delivered since the start, when known")
    deauthorized: bool
    energy_limit_wh: int | None = Field(description="cap of the invalid-id policy")


class ChargerDetail(ChargerSummary):
    """One charger with its boot, connectors, transactions and replay progress."""

    last_boot: BootInfo | None
    connectors: list[ConnectorInfo]
    transactions: list[RunningTransaction]
    replayed: int
    replay_left: int


class ReplayProgress(BaseModel):
    """Replay of one connected charger's outbox."""

    identity: str
    uplink_state: UplinkState
    replayed: int = Field(description="messages replayed on this connection")
    left: int = Field(description="messages still to replay in the current drain")
    outbox_depth: int


class OutboxMessage(BaseModel):
    """A stored charger message."""

    seq: int
    identity: str
    action: str
    message_id: str
    transaction_id: int | None
    created: datetime
    attempts: int
    state: Literal["pending", "dead"]
    last_error: str | None
    frame: str


class OutboxPage(BaseModel):
    """Messages oldest first; ``total`` counts all of them, beyond ``limit`` too."""

    total: int
    messages: list[OutboxMessage]


class RetryResult(BaseModel):
    retried: int


class DropResult(BaseModel):
    dropped: int


class ListEntry(BaseModel):
    """A site local list entry; ``id_tag`` as stored (upper-cased)."""

    id_tag: str
    status: AuthStatus
    expiry: datetime | None
    parent_id_tag: str | None


class ListEntryIn(BaseModel):
    """The body of ``PUT /api/local-list/{id_tag}``."""

    model_config = ConfigDict(extra="forbid")

    status: AuthStatus = AuthStatus.Accepted
    expiry: AwareDatetime | None = Field(
        default=None, description="ISO 8601 with a UTC offset; null: no expiry"
    )
    parent_id_tag: str | None = None

    @field_validator("parent_id_tag")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not is_valid_id_tag(value, _ID_TAG_MAX_LEN):
            raise ValueError("must be 1-20 printable ASCII characters")
        return value


class ImportResult(BaseModel):
    imported: int


class CsvRowError(BaseModel):
    """Why a site list CSV was refused; nothing was imported."""

    line: int | None
    message: str


class ImportErrorBody(BaseModel):
    detail: CsvRowError


class CacheEntry(BaseModel):
    """An authorization cache entry; ``key`` is the id tag (1.6) or ``type:TOKEN``."""

    key: str
    status: AuthStatus
    expiry: datetime | None
    parent_id_tag: str | None


class ClearResult(BaseModel):
    cleared: int


# --------------------------------------------------------------------------- helpers


def energy_reading(replayer: Replayer, identity: str, transaction_id: int | str) -> float | None:
    """The last energy register reading (Wh) the replayer saw for a transaction, keyed by
    the id the charger uses: MeterValues answered offline, replayed, or watched online for
    an energy limit."""
    return replayer._energy.get((identity, transaction_id))


def running_transaction_ids(site: Site, identity: str) -> list[int | str]:
    """Ids of the charger's running transactions that the site tracks (ConcurrentTx)."""
    return sorted((tx for who, tx in site._tx_key if who == identity), key=str)


def ocpp_version(subprotocol: str | None) -> str | None:
    """``ocpp1.6`` -> ``1.6``."""
    if subprotocol is None:
        return None
    return subprotocol.removeprefix("ocpp")


_STATES: dict[str, UplinkState] = {"online": "online", "offline": "offline", "draining": "draining"}


def uplink_state(session: Session) -> UplinkState:
    """The session's state as the API spells it."""
    return _STATES[session.state.value]


def _utc(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _connected_since(session: Session) -> datetime:
    loop_now = asyncio.get_running_loop().time()
    return datetime.fromtimestamp(time.time() - (loop_now - session.connected_at), UTC)


def _boot_fields(frame: str | None) -> tuple[str | None, str | None, str | None]:
    """(vendor, model, firmware version) of a stored BootNotification frame."""
    try:
        payload = orjson.loads(frame)[3] if frame else None
    except (orjson.JSONDecodeError, IndexError, TypeError, KeyError):
        return None, None, None
    if not isinstance(payload, dict):
        return None, None, None
    station = payload.get("chargingStation")
    if isinstance(station, dict):  # 2.0.1 / 2.1
        values = (station.get("vendorName"), station.get("model"), station.get("firmwareVersion"))
    else:
        values = (
            payload.get("chargePointVendor"),
            payload.get("chargePointModel"),
            payload.get("firmwareVersion"),
        )
    vendor, model, firmware = (v if isinstance(v, str) else None for v in values)
    return vendor, model, firmware


def _message(row: OutboxRow) -> OutboxMessage:
    return OutboxMessage(
        seq=row.seq,
        identity=row.identity,
        action=row.action,
        message_id=row.message_id,
        transaction_id=row.tx_id,
        created=datetime.fromtimestamp(row.created, UTC),
        attempts=row.attempts,
        state="dead" if row.state == "dead" else "pending",
        last_error=row.last_error,
        frame=row.frame,
    )


def _mask_url(value: str) -> str:
    """A URL with a password in it, the password masked; any other text unchanged."""
    if "://" not in value or "@" not in value:
        return value
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return value
    if password is None:
        return value
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))


def _masked(value: Any) -> Any:
    if isinstance(value, SecretStr | SecretBytes):
        return MASK
    if isinstance(value, BaseModel):
        return {name: _masked(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, Mapping):
        return {str(k): _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_masked(v) for v in value]
    if isinstance(value, str):
        return _mask_url(value)
    return to_jsonable_python(value)


def masked_settings(settings: Settings) -> dict[str, Any]:
    """The effective settings as JSON data: secrets as ``********``, URL passwords too."""
    data: dict[str, Any] = _masked(settings)
    return data


def _csp_hash(page: str, tag: str) -> str:
    found = re.search(rf"<{tag}>(.*?)</{tag}>", page, re.DOTALL)
    body = found.group(1) if found else ""
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return f"'sha256-{digest}'"


def _status_page() -> tuple[str, str]:
    """The status page and its Content-Security-Policy (its inline code only)."""
    page = resources.files("proxy").joinpath("static/status.html").read_text(encoding="utf-8")
    csp = (
        "default-src 'none'; "
        f"script-src {_csp_hash(page, 'script')}; "
        f"style-src {_csp_hash(page, 'style')}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return page, csp


async def charger_summaries(ctl: Controller) -> list[ChargerSummary]:
    """Connected chargers and those the store knows (registered, or with messages)."""
    counts = await ctl.store.outbox_counts()
    versions = await ctl.store.charger_versions()
    sessions = dict(ctl.chargers.sessions)
    out: list[ChargerSummary] = []
    for identity in sorted(sessions.keys() | versions.keys() | counts.keys()):
        session = sessions.get(identity)
        pending, dead = counts.get(identity, (0, 0))
        out.append(
            ChargerSummary(
                identity=identity,
                ocpp_version=ocpp_version(
                    session.subprotocol if session is not None else versions.get(identity)
                ),
                uplink_state=uplink_state(session) if session is not None else "offline",
                connected=session is not None,
                connected_since=_connected_since(session) if session is not None else None,
                outbox_depth=pending,
                dead_letters=dead,
            )
        )
    return out


async def running_transactions(ctl: Controller, identity: str) -> list[RunningTransaction]:
    """Transactions started offline and not stopped (from the store), then those started
    online that the site tracks, with the energy the controller saw."""
    out: list[RunningTransaction] = []
    seen: set[int | str] = set()
    for tx in await ctl.store.transactions_of(identity):
        prov: int = tx["provisional"]
        real: int | None = tx["real"]
        seen.add(prov)
        if real is not None:
            seen.add(real)
        if tx["stopped"]:
            continue
        reading = energy_reading(ctl.replayer, identity, prov)
        out.append(
            RunningTransaction(
                transaction_id=prov,
                csms_transaction_id=real,
                connector=tx["connector"],
                provisional=True,
                status=tx["status"],
                meter_start_wh=tx["meter_start"],
                meter_wh=reading,
                energy_wh=None if reading is None else reading - tx["meter_start"],
                deauthorized=bool(tx["deauthorized"]),
                energy_limit_wh=tx["cap_wh"],
            )
        )
    for tx_id in running_transaction_ids(ctl.site, identity):
        if tx_id in seen:
            continue
        out.append(
            RunningTransaction(
                transaction_id=tx_id,
                csms_transaction_id=tx_id,
                connector=None,
                provisional=False,
                status=None,
                meter_start_wh=None,
                meter_wh=energy_reading(ctl.replayer, identity, tx_id),
                energy_wh=None,
                deauthorized=False,
                energy_limit_wh=None,
            )
        )
    return out


async def charger_detail(ctl: Controller, identity: str) -> ChargerDetail | None:
    summary = next((c for c in await charger_summaries(ctl) if c.identity == identity), None)
    if summary is None:
        return None
    session = ctl.chargers.sessions.get(identity)
    record = await ctl.store.charger(identity)
    boot: BootInfo | None = None
    if record is not None:
        vendor, model, firmware = _boot_fields(record["boot_frame"])
        boot = BootInfo(
            at=_utc(record["boot_at"]),
            accepted=bool(record["accepted"]),
            awaiting_replay=bool(record["boot_replay"]),
            offline_status=session.boot_status if session is not None else None,
            vendor=vendor,
            model=model,
            firmware_version=firmware,
        )
    connectors = [
        ConnectorInfo(
            connector=c["connector"],
            status=c["status"],
            updated=_utc(c["updated"]),
            awaiting_replay=bool(c["replay"]),
        )
        for c in await ctl.store.connector_statuses(identity)
    ]
    return ChargerDetail(
        **summary.model_dump(),
        last_boot=boot,
        connectors=connectors,
        transactions=await running_transactions(ctl, identity),
        replayed=session.replayed if session is not None else 0,
        replay_left=session.replay_left if session is not None else 0,
    )


# --------------------------------------------------------------------------- the app


def build_app(ctl: Controller) -> FastAPI:
    """The admin application of one controller.

    Raises :class:`AdminExposureError` if ``admin.host`` is not loopback and no
    ``admin.token`` is set.
    """
    settings = ctl.settings.admin
    check_exposure(settings)
    app = FastAPI(
        title="OCPP site controller",
        version="0.1.0",
        description="Admin API of the OCPP site controller. Bound beyond loopback, every "
        "endpoint except /healthz and /readyz requires admin.token (Bearer, or Basic with "
        "the token as password).",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.guard = _Guard(settings)

    @app.exception_handler(StoreError)
    async def store_failed(request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"detail": f"store unavailable: {exc}"}, status_code=503)

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Chargers can connect: store open, charger port listening")
    async def readyz() -> JSONResponse:
        ok = ctl.ready()
        return JSONResponse(
            {"status": "ready" if ok else "starting", **ctl.status()},
            status_code=200 if ok else 503,
        )

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        dependencies=[Depends(_caller)],
    )
    async def metrics() -> Response:
        return Response(generate_latest(ctl.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(_caller)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(_caller)])
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="openapi.json", title=f"{app.title} - API")

    page, csp = _status_page()

    @app.get(
        "/",
        summary="Status page: chargers, uplinks, outbox and dead letters (HTML)",
        response_class=HTMLResponse,
        dependencies=[Depends(_page_caller)],
    )
    async def status_page() -> HTMLResponse:
        return HTMLResponse(
            page,
            headers={
                "Content-Security-Policy": csp,
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
            },
        )

    log = get_logger(component="admin")
    for router in (
        _charger_api(ctl),
        _outbox_api(ctl, log),
        _local_list_api(ctl, log),
        _cache_and_settings_api(ctl, log),
    ):
        app.include_router(router)
    return app


def _api() -> APIRouter:
    return APIRouter(prefix="/api", dependencies=[Depends(_caller)])


def _charger_api(ctl: Controller) -> APIRouter:
    api = _api()

    @api.get("/chargers", summary="Chargers: connected, or known to the store")
    async def list_chargers() -> list[ChargerSummary]:
        return await charger_summaries(ctl)

    @api.get(
        "/chargers/{identity}",
        summary="One charger: last boot, connector statuses, running transactions",
        responses={404: {"description": "no such charger"}},
    )
    async def one_charger(identity: str) -> ChargerDetail:
        detail = await charger_detail(ctl, identity)
        if detail is None:
            raise HTTPException(404, f"no charger {identity!r}")
        return detail

    @api.get("/replay", summary="Replay progress of each connected charger")
    async def replay() -> list[ReplayProgress]:
        depths = await ctl.store.depths()
        return [
            ReplayProgress(
                identity=identity,
                uplink_state=uplink_state(session),
                replayed=session.replayed,
                left=session.replay_left,
                outbox_depth=depths.get(identity, 0),
            )
            for identity, session in sorted(ctl.chargers.sessions.items())
        ]

    return api


_ChargerQuery = Annotated[str | None, Query(description="only this charger's messages")]
_LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="at most this many")]
_SeqPath = Annotated[int, Path(description="the dead letter's seq")]
_IdTagPath = Annotated[str, Path(description="the id tag (case-insensitive)")]


def _outbox_api(ctl: Controller, log: Any) -> APIRouter:
    api = _api()
    store = ctl.store

    async def page(identity: str | None, state: str, limit: int) -> OutboxPage:
        rows = await store.outbox(identity, state=state, limit=limit)
        total = await store.outbox_count(identity, state=state)
        return OutboxPage(total=total, messages=[_message(r) for r in rows])

    @api.get("/outbox", summary="Messages waiting for the CSMS, oldest first")
    async def outbox(charger: _ChargerQuery = None, limit: _LimitQuery = 100) -> OutboxPage:
        return await page(charger, "pending", limit)

    @api.get("/outbox/dead-letters", summary="Messages the CSMS refused after every attempt")
    async def dead_letters(charger: _ChargerQuery = None, limit: _LimitQuery = 100) -> OutboxPage:
        return await page(charger, "dead", limit)

    @api.post(
        "/outbox/dead-letters/retry",
        summary="Put every dead letter back in the outbox (replayed at the next drain)",
    )
    async def retry_all(who: Caller) -> RetryResult:
        count = await store.retry_dead(None)
        log.info("admin_dead_letters_retried", who=who, seq="all", count=count)
        return RetryResult(retried=count)

    @api.post(
        "/outbox/dead-letters/{seq}/retry",
        summary="Put one dead letter back in the outbox",
        responses={404: {"description": "no dead letter with this seq"}},
    )
    async def retry_one(seq: _SeqPath, who: Caller) -> RetryResult:
        count = await store.retry_dead(seq)
        if not count:
            raise HTTPException(404, f"no dead letter {seq}")
        log.info("admin_dead_letters_retried", who=who, seq=seq, count=count)
        return RetryResult(retried=count)

    @api.delete("/outbox/dead-letters", summary="Delete every dead letter for good")
    async def drop_all(who: Caller) -> DropResult:
        count = await store.drop_dead(None)
        log.info("admin_dead_letters_dropped", who=who, seq="all", count=count)
        return DropResult(dropped=count)

    @api.delete(
        "/outbox/dead-letters/{seq}",
        summary="Delete one dead letter for good",
        responses={404: {"description": "no dead letter with this seq"}},
    )
    async def drop_one(seq: _SeqPath, who: Caller) -> DropResult:
        count = await store.drop_dead(seq)
        if not count:
            raise HTTPException(404, f"no dead letter {seq}")
        log.info("admin_dead_letters_dropped", who=who, seq=seq, count=count)
        return DropResult(dropped=count)

    return api


def _list_entry(key: str, entry: AuthEntry) -> ListEntry:
    return ListEntry(
        id_tag=key, status=entry.status, expiry=entry.expiry, parent_id_tag=entry.parent_id_tag
    )


def _id_tag_key(id_tag: str) -> str:
    if not is_valid_id_tag(id_tag, _ID_TAG_MAX_LEN):
        raise HTTPException(422, "id_tag must be 1-20 printable ASCII characters")
    return token_key(id_tag, None)


async def _csv_body(request: Request) -> str:
    """The body of an import request as text, or the HTTP error that refuses it."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not media.startswith("text/"):
        raise HTTPException(415, "send the CSV as Content-Type: text/csv")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_IMPORT_BYTES:
        raise HTTPException(413, f"larger than {MAX_IMPORT_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_IMPORT_BYTES:
            raise HTTPException(413, f"larger than {MAX_IMPORT_BYTES} bytes")
    try:
        return bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        line = bytes(body[: exc.start]).count(b"\n") + 1
        raise HTTPException(
            422, {"line": line, "message": "not UTF-8 text; nothing imported"}
        ) from None


def _local_list_api(ctl: Controller, log: Any) -> APIRouter:
    api = _api()
    store = ctl.store

    @api.get("/local-list", summary="The site local list, by id tag")
    async def local_list() -> list[ListEntry]:
        entries = await store.load_site_list()
        return [_list_entry(key, entries[key]) for key in sorted(entries)]

    @api.post(
        "/local-list/import",
        summary="Replace the site list with a CSV file (all rows or none)",
        description="Columns id_tag,status,expiry,parent_id_tag with a header row, as "
        "`ocpp-lc local-list import` reads them. A bad row answers 422 with its line "
        "number and leaves the list as it was.",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"text/csv": {"schema": {"type": "string"}}},
            }
        },
        responses={
            413: {"description": f"more than {MAX_IMPORT_BYTES} bytes"},
            415: {"description": "not a text/csv body"},
            422: {"model": ImportErrorBody, "description": "a malformed row"},
        },
    )
    async def import_list(request: Request, who: Caller) -> ImportResult:
        text = await _csv_body(request)
        try:
            entries = parse_csv(text)
        except ListFormatError as exc:
            log.info("admin_site_list_import_refused", who=who, line=exc.line)
            raise HTTPException(
                422, {"line": exc.line, "message": f"{exc.message}; nothing imported"}
            ) from None
        await store.replace_site_list(entries)
        log.info("admin_site_list_imported", who=who, entries=len(entries))
        return ImportResult(imported=len(entries))

    @api.put("/local-list/{id_tag:path}", summary="Add or replace one site list entry")
    async def put_entry(id_tag: _IdTagPath, body: ListEntryIn, who: Caller) -> ListEntry:
        key = _id_tag_key(id_tag)
        entry = AuthEntry(body.status, body.expiry, body.parent_id_tag)
        await store.site_list_put(key, entry)
        log.info("admin_site_list_put", who=who, id_tag=mask_id_tag(key), status=entry.status.value)
        return _list_entry(key, entry)

    @api.delete(
        "/local-list/{id_tag:path}",
        summary="Remove one site list entry; the removed entry",
        responses={404: {"description": "no such entry"}},
    )
    async def remove_entry(id_tag: _IdTagPath, who: Caller) -> ListEntry:
        key = _id_tag_key(id_tag)
        entry = await store.site_list_entry(key)
        if entry is None:
            raise HTTPException(404, "no such id tag in the site list")
        await store.site_list_remove(key)
        log.info("admin_site_list_removed", who=who, id_tag=mask_id_tag(key))
        return _list_entry(key, entry)

    return api


def _cache_and_settings_api(ctl: Controller, log: Any) -> APIRouter:
    api = _api()
    store = ctl.store

    @api.get("/cache", summary="The site authorization cache (answers seen from the CSMS)")
    async def cache() -> list[CacheEntry]:
        entries = await store.load_cache()
        return [
            CacheEntry(
                key=key,
                status=entries[key].status,
                expiry=entries[key].expiry,
                parent_id_tag=entries[key].parent_id_tag,
            )
            for key in sorted(entries)
        ]

    @api.delete("/cache", summary="Empty the authorization cache")
    async def clear_cache(who: Caller) -> ClearResult:
        count = len(await store.load_cache())
        await store.cache_clear()
        log.info("admin_cache_cleared", who=who, count=count)
        return ClearResult(cleared=count)

    @api.get("/settings", summary="The effective settings, secrets masked")
    async def effective_settings() -> dict[str, Any]:
        return masked_settings(ctl.settings)

    return api


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the controller owns the lifecycle."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AdminServer:
    def __init__(self, settings: AdminSettings, app: FastAPI) -> None:
        self._settings = settings
        self._app = app
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> None:
        check_exposure(self._settings)
        sock = socket.socket(socket.AF_INET6 if ":" in self._settings.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._settings.host, self._settings.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app, log_config=None, access_log=False, lifespan="off", log_level="warning"
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        async with asyncio.timeout(10):
            while not self._server.started:
                if self._task.done():
                    self._task.result()
                await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
