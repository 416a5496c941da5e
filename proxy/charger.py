"""The downstream server: chargers connect here.

The opening handshake decides everything before the upgrade: the identity (last path
segment, percent-decoded, 1 to 48 characters, no ``:``, printable ASCII), the OCPP
subprotocols the charger offers, and the uplink, opened first so that a CSMS refusal
(401, 403, 404, ...) reaches the charger as the same HTTP status. A charger offering no
supported subprotocol gets ``101`` without ``Sec-WebSocket-Protocol`` and an immediate
close, as OCPP-J requires (not a bare 400).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from config.logging import get_logger
from config.settings import Settings
from policies.admission import Verdict, basic_header
from proxy.gate import Gate, client_tls, server_tls
from proxy.metrics import Metrics
from proxy.replay import Replayer
from proxy.router import Router, State
from proxy.session import ConnectLimiter, Observer, Reconnect, Responder, Session
from proxy.store import StoreError
from proxy.uplink import UplinkRefused, UplinkRequest, UplinkUnavailable, open_uplink
from proxy.versions import SUPPORTED_SUBPROTOCOLS, dialect_for

MAX_IDENTITY_LENGTH = 48


def identity_from_path(path: str) -> str | None:
    """The charger identity in a request path, or None if it is not acceptable.

    The identity is the last segment of the path, percent-decoded; a path ending in
    ``/`` has no identity.
    """
    if not all(33 <= ord(c) < 127 for c in path):
        return None
    raw = urlsplit(path).path.rsplit("/", 1)[-1]
    if not raw:
        return None
    try:
        identity = unquote(raw, errors="strict") if "%" in raw else raw
    except UnicodeDecodeError:
        return None
    if not 0 < len(identity) <= MAX_IDENTITY_LENGTH:
        return None
    if ":" in identity or "/" in identity or identity in (".", ".."):
        return None
    if not all(33 <= ord(c) < 127 for c in identity):
        return None
    return identity


def offered_subprotocols(headers: Headers) -> list[str]:
    offered: list[str] = []
    for value in headers.get_all("Sec-WebSocket-Protocol"):
        offered.extend(p.strip() for p in value.split(",") if p.strip())
    return offered


@dataclass(slots=True)
class _Handshake:
    identity: str
    uplink: ClientConnection | None
    subprotocol: str | None
    authorization: str | None = None
    user_agent: str | None = None


class ChargerServer:
    """Accepts chargers, opens their uplinks, and runs one session each."""

    def __init__(
        self,
        settings: Settings,
        *,
        responder: Responder | None = None,
        observer: Observer | None = None,
        replayer: Replayer | None = None,
        metrics: Metrics | None = None,
        gate: Gate,
    ) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics()
        self.responder = responder
        self.observer = observer
        self.replayer = replayer
        self.limiter = ConnectLimiter(settings.uplink.max_connects_per_second)
        self.gate = gate
        self.uplink_tls = client_tls(settings)
        self._per_ip: Counter[str] = Counter()
        self.sessions: dict[str, Session] = {}
        self._handshakes: dict[Any, _Handshake] = {}
        self._reaping: set[asyncio.Task[None]] = set()
        self._server: Server | None = None
        self.log = get_logger(component="downstream")

    @property
    def port(self) -> int:
        assert self._server is not None
        sock = next(iter(self._server.sockets))
        port: int = sock.getsockname()[1]
        return port

    async def start(self) -> None:
        ls = self.settings.listen
        self._server = await serve(
            self._handler,
            ls.host,
            ls.port,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            compression="deflate" if ls.compression else None,
            ssl=server_tls(self.settings),
            open_timeout=ls.open_timeout,
            ping_interval=ls.ping_interval or None,
            ping_timeout=ls.ping_timeout,
            max_size=ls.max_message_size,
            max_queue=16,
            backlog=4096,
            server_header=None,
        )
        self.log.info("listening", host=ls.host, port=self.port)

    async def close(self) -> None:
        """Stop accepting, close every charger with 1001, and wait for the sessions."""
        if self._server is None:
            return
        self._server.close(close_connections=True)
        await self._server.wait_closed()
        for hs in list(self._handshakes.values()):
            if hs.uplink is not None:
                await hs.uplink.close()
        self._handshakes.clear()

    # -- handshake ----------------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        identity = identity_from_path(request.path)
        if identity is None:
            self.gate.security_event("bad_identity", path=repr(request.path[:100]))
            return connection.respond(http.HTTPStatus.NOT_FOUND, "Unknown charger identity\n")
        offered = offered_subprotocols(request.headers)
        ours = [p for p in offered if p in SUPPORTED_SUBPROTOCOLS]
        log = self.log.bind(charger=identity)
        if not ours:
            # Completed without a subprotocol, then closed at once by the handler.
            self._handshakes[connection] = _Handshake(identity, None, None)
            self.gate.security_event(
                "no_supported_subprotocol", charger=identity, offered=offered[:8]
            )
            return None
        authorization = request.headers.get("Authorization")
        user_agent = request.headers.get("User-Agent")
        remote = connection.remote_address[0] if connection.remote_address else "?"
        cap = self.settings.listen.max_connections_per_ip
        if cap and self._per_ip[remote] >= cap:
            self.gate.security_event("ip_connection_cap", charger=identity, remote=remote)
            return connection.respond(http.HTTPStatus.TOO_MANY_REQUESTS, "Too many connections\n")
        peercert = None
        if connection.transport is not None:
            peercert = connection.transport.get_extra_info("peercert")
        version = "ocpp1.6" if "ocpp1.6" in ours else ours[0]
        verdict, registered = await self.gate.decide(
            identity, authorization, version, peercert, remote
        )
        if verdict is Verdict.REFUSE:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "Unknown charger identity\n")
        if verdict is Verdict.UNAUTHORIZED:
            response = connection.respond(http.HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="OCPP", charset="UTF-8"'
            return response
        upstream_auth = self._upstream_authorization(identity, authorization)
        try:
            await self.limiter.acquire()
            uplink = await open_uplink(
                self.settings.csms,
                UplinkRequest(identity, tuple(ours), upstream_auth, user_agent),
                self.uplink_tls,
            )
        except UplinkRefused as exc:
            log.warning("charger_refused", reason="csms_refused", status=exc.status)
            self.gate.security_event(f"csms_refused_{exc.status}", charger=identity, remote=remote)
            return connection.respond(http.HTTPStatus(exc.status), f"{exc.reason}\n")
        except UplinkUnavailable as exc:
            if self.responder is None or not self._serves_offline():
                log.warning("charger_refused", reason="csms_unavailable", error=str(exc))
                return connection.respond(
                    http.HTTPStatus.BAD_GATEWAY, "CSMS unreachable, try again later\n"
                )
            if not registered and self.settings.offline.unknown_charger == "reject":
                self.gate.security_event(
                    "unknown_identity_offline", charger=identity, remote=remote
                )
                return connection.respond(http.HTTPStatus.NOT_FOUND, "Unknown charger identity\n")
            log.info("uplink_unavailable", error=str(exc))
            chosen = next(p for p in SUPPORTED_SUBPROTOCOLS if p in ours)
            self._handshakes[connection] = _Handshake(
                identity, None, chosen, upstream_auth, user_agent
            )
            return None
        if verdict is Verdict.ASK_CSMS and authorization is not None:
            # The CSMS accepted these credentials: keep a hash for the next outage.
            try:
                await self.gate.learn(identity, authorization, "csms_accepted")
            except StoreError as exc:
                log.error("credential_not_kept", error=str(exc))
        self._handshakes[connection] = _Handshake(
            identity, uplink, uplink.subprotocol, upstream_auth, user_agent
        )
        asyncio.get_running_loop().call_later(
            self.settings.listen.open_timeout + 1.0, self._reap, connection
        )
        return None

    def _upstream_authorization(self, identity: str, authorization: str | None) -> str | None:
        """The Authorization header of the uplink: configured credentials, else the
        charger's own passed through (unless that is turned off)."""
        charger = self.settings.chargers.get(identity)
        if charger is not None and charger.csms_password is not None:
            return basic_header(identity, charger.csms_password.get_secret_value().encode())
        return authorization if self.settings.csms.pass_authorization else None

    def _reap(self, connection: ServerConnection) -> None:
        """Close the uplink of a handshake that never reached its session."""
        hs = self._handshakes.pop(connection, None)
        if hs is not None and hs.uplink is not None:
            self.log.info("uplink_reaped", charger=hs.identity)
            task = asyncio.get_running_loop().create_task(hs.uplink.close(1001))
            self._reaping.add(task)
            task.add_done_callback(self._reaping.discard)

    async def _has_backlog(self, identity: str) -> bool:
        """Whether a charger has anything waiting for replay (after an outage or restart)."""
        if self.replayer is None:
            return False
        store = self.replayer.store
        if await store.outbox_depth(identity):
            return True
        record = await store.charger(identity)
        if record is not None and record["boot_replay"]:
            return True
        return any(s["replay"] for s in await store.connector_statuses(identity))

    def _serves_offline(self) -> bool:
        return self.settings.offline.mode == "serve"

    def _select_subprotocol(
        self, connection: ServerConnection, subprotocols: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        hs = self._handshakes.get(connection)
        if hs is None or hs.subprotocol is None or hs.subprotocol not in subprotocols:
            return None
        return Subprotocol(hs.subprotocol)

    # -- session --------------------------------------------------------------------

    async def _handler(self, connection: ServerConnection) -> None:
        hs = self._handshakes.pop(connection, None)
        if hs is None:  # pragma: no cover - the handshake always records itself
            await connection.close(1011, "internal error")
            return
        if connection.subprotocol is None:
            if hs.uplink is not None:
                await hs.uplink.close(1000)
            await connection.close(1002, "no supported OCPP subprotocol")
            return
        dialect = dialect_for(connection.subprotocol)
        log = get_logger(charger=hs.identity, ocpp=dialect.subprotocol)
        router = Router(
            dialect,
            call_timeout=self.settings.csms.call_timeout,
            max_queued_calls=self.settings.listen.max_queued_calls,
            watched_actions=dialect.watched_actions if self.observer else frozenset(),
            state=State.ONLINE if hs.uplink is not None else State.OFFLINE,
        )
        serves = self._serves_offline()
        session = Session(
            hs.identity,
            connection,
            hs.uplink,
            router,
            log,
            responder=self.responder if serves else None,
            observer=self.observer,
            metrics=self.metrics,
            reconnect=Reconnect(
                self.settings.csms,
                self.settings.uplink,
                UplinkRequest(hs.identity, (dialect.subprotocol,), hs.authorization, hs.user_agent),
                self.limiter,
                self.replayer,
                self.uplink_tls,
            )
            if serves
            else None,
        )
        if self.replayer is not None:
            await self.replayer.attach(session)
            if hs.uplink is not None and await self._has_backlog(hs.identity):
                router.uplink_back(draining=True)
        remote = connection.remote_address[0] if connection.remote_address else "?"
        self._per_ip[remote] += 1
        old = self.sessions.get(hs.identity)
        self.sessions[hs.identity] = session
        if old is not None:
            log.warning("charger_replaced")
            with contextlib.suppress(Exception):
                await old.charger.close(1008, "replaced by a newer connection")
        log.info("charger_connected", uplink=hs.uplink is not None, state=router.state.value)
        if router.state is State.DRAINING and self.replayer is not None:
            session._spawn(self.replayer.drain(session), "drain")
        try:
            await session.run()
        finally:
            self._per_ip[remote] -= 1
            if self._per_ip[remote] <= 0:
                del self._per_ip[remote]
            if self.sessions.get(hs.identity) is session:
                del self.sessions[hs.identity]
