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
from proxy.direct import DirectServerConnection
from proxy.gate import Gate, certificate_cn, client_tls, server_tls
from proxy.metrics import Metrics
from proxy.replay import Replayer
from proxy.router import Router, State
from proxy.session import ConnectLimiter, Observer, Reconnect, Responder, Session
from proxy.store import StoreError
from proxy.uplink import (
    UplinkRefused,
    UplinkRequest,
    UplinkUnavailable,
    first_common,
    open_uplink,
)
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
    remote: str = "?"


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
        self.limiter = ConnectLimiter(
            settings.uplink.max_connects_per_second, settings.uplink.probe_interval
        )
        self.gate = gate
        self.uplink_tls = client_tls(settings)
        self._per_ip: Counter[str] = Counter()
        self._identity_locks: dict[str, asyncio.Lock] = {}
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
            ssl=server_tls(
                self.settings,
                lambda reason: self.gate.security_event("tls_handshake_failed", reason=reason),
            ),
            open_timeout=ls.open_timeout,
            close_timeout=min(5.0, self.settings.runtime.shutdown_grace or 5.0),
            ping_interval=ls.ping_interval or None,
            ping_timeout=ls.ping_timeout,
            max_size=ls.max_message_size,
            max_queue=16,
            backlog=4096,
            server_header=None,
            create_connection=DirectServerConnection,
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
        await self.limiter.close()

    # -- handshake ----------------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        identity = identity_from_path(request.path)
        if identity is None:
            self.gate.security_event("bad_identity", path=repr(request.path[:100]))
            return connection.respond(http.HTTPStatus.NOT_FOUND, "Unknown charger identity\n")
        remote = connection.remote_address[0] if connection.remote_address else "?"
        cap = self.settings.listen.max_connections_per_ip
        if cap and self._per_ip[remote] >= cap:
            self.gate.security_event("ip_connection_cap", charger=identity, remote=remote)
            return connection.respond(http.HTTPStatus.TOO_MANY_REQUESTS, "Too many connections\n")
        # The slot is held from here: released on a refusal, by the session's end, or
        # by the reaper when the handshake never completes.
        self._per_ip[remote] += 1
        lock = self._identity_locks.setdefault(identity, asyncio.Lock())
        try:
            async with lock:
                response = await self._handshake(connection, request, identity, remote)
        except BaseException:
            self._release(remote)
            raise
        finally:
            if not lock.locked() and self._identity_locks.get(identity) is lock:
                del self._identity_locks[identity]
        if response is not None:
            self._release(remote)
        else:
            asyncio.get_running_loop().call_later(
                self.settings.listen.open_timeout + 1.0, self._reap, connection
            )
        return response

    def _release(self, remote: str) -> None:
        self._per_ip[remote] -= 1
        if self._per_ip[remote] <= 0:
            del self._per_ip[remote]

    async def _handshake(
        self, connection: ServerConnection, request: Request, identity: str, remote: str
    ) -> Response | None:
        """Decide one handshake (one at a time per identity); None accepts it."""
        offered = offered_subprotocols(request.headers)
        ours = [p for p in offered if p in SUPPORTED_SUBPROTOCOLS]
        log = self.log.bind(charger=identity)
        if not ours:
            # Completed without a subprotocol, then closed at once by the handler.
            self._handshakes[connection] = _Handshake(identity, None, None, remote=remote)
            self.gate.security_event(
                "no_supported_subprotocol", charger=identity, offered=offered[:8]
            )
            return None
        authorization = request.headers.get("Authorization")
        user_agent = request.headers.get("User-Agent")
        peercert = None
        if connection.transport is not None:
            peercert = connection.transport.get_extra_info("peercert")
        version = "ocpp1.6" if "ocpp1.6" in ours else ours[0]
        decision = await self.gate.decide(identity, authorization, version, peercert, remote)
        if decision.verdict is Verdict.REFUSE:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "Unknown charger identity\n")
        if decision.verdict is Verdict.UNAUTHORIZED:
            return self._unauthorized(connection)
        # One uplink per identity at a time: a checked newcomer replaces the old session
        # before its uplink opens. Credentials only the CSMS can check must pass the CSMS
        # first, so that an impostor cannot evict the charger.
        unchecked = decision.verdict is Verdict.ASK_CSMS and authorization is not None
        if not unchecked:
            await self._evict(identity, log)
        upstream_auth = self._upstream_authorization(identity, authorization)
        try:
            uplink = await self._open_uplink_now(
                UplinkRequest(identity, tuple(ours), upstream_auth, user_agent)
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
            if decision.refuse_offline:
                await self.gate.unauthorized_offline(identity, remote)
                return self._unauthorized(connection)
            if not decision.registered and self.settings.offline.unknown_charger == "reject":
                self.gate.security_event(
                    "unknown_identity_offline", charger=identity, remote=remote
                )
                return connection.respond(http.HTTPStatus.NOT_FOUND, "Unknown charger identity\n")
            log.info("uplink_unavailable", error=str(exc))
            if unchecked:
                await self._evict(identity, log)
            chosen = first_common(ours, SUPPORTED_SUBPROTOCOLS)
            self._handshakes[connection] = _Handshake(
                identity, None, chosen, upstream_auth, user_agent, remote
            )
            return None
        self.limiter.reached()
        if decision.verdict is Verdict.ASK_CSMS and authorization is not None:
            # The CSMS accepted these credentials: keep a hash for the next outage.
            try:
                await self.gate.learn(identity, authorization, "csms_accepted")
            except StoreError as exc:
                log.error("credential_not_kept", error=str(exc))
        self._handshakes[connection] = _Handshake(
            identity, uplink, uplink.subprotocol, upstream_auth, user_agent, remote
        )
        return None

    @staticmethod
    def _unauthorized(connection: ServerConnection) -> Response:
        response = connection.respond(http.HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
        response.headers["WWW-Authenticate"] = 'Basic realm="OCPP", charset="UTF-8"'
        return response

    async def _evict(self, identity: str, log: Any) -> None:
        """Close the session an identity already has (1008), uplink included."""
        old = self.sessions.get(identity)
        if old is None:
            return
        log.warning("charger_replaced")
        with contextlib.suppress(Exception):
            await old.charger.close(1008, "replaced by a newer connection")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.csms.open_timeout):
                await asyncio.shield(old.closed)

    async def _open_uplink_now(self, request: UplinkRequest) -> ClientConnection:
        """The uplink of a charger in its handshake, or UplinkUnavailable before the
        charger's own handshake timeout runs out (it is then served offline and its
        uplink opens later)."""
        # A burst of chargers (a controller restart) must not outwait its handshake
        # timeout behind the connect rate ...
        budget = min(2.0, self.settings.listen.open_timeout / 2)
        if not await self.limiter.acquire(max_wait=budget):
            raise UplinkUnavailable("uplink deferred: connect rate reached")
        # ... nor behind a CSMS slow to accept (one shutting down, a proxy holding the
        # connection).
        wait = self.settings.listen.open_timeout / 2
        try:
            async with asyncio.timeout(wait):
                return await open_uplink(self.settings.csms, request, self.uplink_tls)
        except TimeoutError:
            raise UplinkUnavailable(f"uplink not open within {wait:g} s") from None

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
        if hs is not None:
            self._release(hs.remote)
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
        try:
            await self._serve_session(connection, hs)
        finally:
            self._release(hs.remote)

    async def _serve_session(self, connection: ServerConnection, hs: _Handshake) -> None:
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
            serial_cn=self._serial_cn(connection),
        )
        session.max_bad_frames_per_minute = self.settings.listen.max_bad_frames_per_minute
        if self.replayer is not None:
            await self.replayer.attach(session)
            if hs.uplink is not None and await self._has_backlog(hs.identity):
                router.uplink_back(draining=True)
        old = self.sessions.get(hs.identity)
        self.sessions[hs.identity] = session
        if old is not None:
            # An unchecked newcomer the CSMS has now accepted: the old session goes.
            log.warning("charger_replaced")
            with contextlib.suppress(Exception):
                await old.charger.close(1008, "replaced by a newer connection")
        log.info("charger_connected", uplink=hs.uplink is not None, state=router.state.value)
        if router.state is State.DRAINING and self.replayer is not None:
            session.start_drain(self.replayer)
        try:
            await session.run()
        finally:
            if self.sessions.get(hs.identity) is session:
                del self.sessions[hs.identity]

    def _serial_cn(self, connection: ServerConnection) -> str | None:
        """Profile 3 with ``cn_match = "serial"``: the certificate CN the charger's
        BootNotification serial number must be found in."""
        ls = self.settings.listen
        if ls.security_profile != 3 or ls.cn_match != "serial" or connection.transport is None:
            return None
        return certificate_cn(connection.transport.get_extra_info("peercert")) or ""
