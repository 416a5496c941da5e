"""Who gets in, end to end: admission, passwords, TLS and certificates (SCENARIOS.md 16).

RELIABILITY.md R2, R31-R37, T6-T8, F8, F14 and the handshake rows of §5.5 (B15-B18).
The controller runs in-process with real sockets on 127.0.0.1; chargers and CSMS peers
are real WebSocket endpoints. Certificates come from a throw-away CA made by ``trustme``:
a server certificate for 127.0.0.1/localhost, client certificates whose CN is a charger
identity, the controller's own client certificate for a profile 3 CSMS, and a second CA
nobody trusts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ssl
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import pytest
import structlog
import trustme
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201
from peers import (
    OCPP16,
    OCPP201,
    ChargerPeer16,
    ChargerPeer201,
    CsmsPeer,
    RawCharger,
    controller_url,
)
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.http11 import Request, Response

from policies.admission import Credential, basic_header, verify_password
from proxy.gate import certificate_cn

if TYPE_CHECKING:
    from conftest import ControllerFactory

    from proxy.app import Controller

pytestmark = pytest.mark.timeout(30)

#: Failed logins are answered after this delay in most tests (the default is 1 s).
FAST_401 = {"auth_failure_delay": 0.05}
#: Reconnect the uplinks quickly (the fault-test timings of conftest.QUICK).
QUICK_UPLINK = {
    "reconnect_min": 0.05,
    "reconnect_max": 0.2,
    "reconnect_jitter": 0.05,
    "max_connects_per_second": 500,
}
#: A 1.6 AuthorizationKey (20 bytes, 40 hex digits) and the one the CSMS sets later.
OLD_KEY = "00112233445566778899aabbccddeeff01234567"
NEW_KEY = "a1b2c3d4e5f60718293a4b5c6d7e8f9001122334"


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    """PEM files of a test CA, the controller's certificates, and charger certificates."""

    root: Path
    ca: trustme.CA
    ca_cert: Path
    #: The charger-facing server certificate (127.0.0.1, localhost) and its key.
    server_cert: Path
    server_key: Path
    #: The controller's own client certificate for a profile 3 CSMS (CN below).
    controller_cert: Path
    controller_key: Path
    controller_cn: str
    #: A CA nobody trusts (its certificate file, and the CA to issue from).
    rogue_ca_cert: Path
    rogue: trustme.CA

    def client_context(
        self,
        cn: str | None = None,
        *,
        issuer: trustme.CA | None = None,
        expired: bool = False,
    ) -> ssl.SSLContext:
        """A charger's TLS context: trusts the test CA; presents a certificate with CN
        ``cn`` (issued by ``issuer``, default the test CA) when one is given."""
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        if cn is not None:
            leaf = self.leaf(cn, issuer=issuer, expired=expired)
            leaf.configure_cert(ctx)
        return ctx

    def leaf(
        self, cn: str, *, issuer: trustme.CA | None = None, expired: bool = False
    ) -> trustme.LeafCert:
        ca = issuer or self.ca
        if expired:
            now = dt.datetime.now(dt.UTC)
            return ca.issue_cert(
                f"{cn.lower()}.chargers.test",
                common_name=cn,
                not_before=now - dt.timedelta(days=30),
                not_after=now - dt.timedelta(days=1),
            )
        return ca.issue_cert(f"{cn.lower()}.chargers.test", common_name=cn)

    def csms_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        """A CSMS server context with a certificate for 127.0.0.1, optionally mutual TLS."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(ctx)
        return ctx


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The test PKI, written once per test session."""
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA(organization_name="Site Controller Test CA")
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    (root / "server.pem").write_bytes(b"".join(p.bytes() for p in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(root / "server.key"))
    controller_cn = "site-controller-01"
    own = ca.issue_cert("site-controller-01.test", common_name=controller_cn)
    (root / "controller.pem").write_bytes(b"".join(p.bytes() for p in own.cert_chain_pems))
    own.private_key_pem.write_to_path(str(root / "controller.key"))
    rogue = trustme.CA(organization_name="Nobody Trusts Me")
    rogue.cert_pem.write_to_path(str(root / "rogue-ca.pem"))
    return Pki(
        root,
        ca,
        root / "ca.pem",
        root / "server.pem",
        root / "server.key",
        root / "controller.pem",
        root / "controller.key",
        controller_cn,
        root / "rogue-ca.pem",
        rogue,
    )


def tls_listen(pki: Pki, profile: int, **extra: Any) -> dict[str, Any]:
    """``listen`` settings of a profile 2 or 3 charger port."""
    listen: dict[str, Any] = {
        "security_profile": profile,
        "tls_cert": pki.server_cert,
        "tls_key": pki.server_key,
        **FAST_401,
        **extra,
    }
    if profile == 3:
        listen["client_ca"] = pki.ca_cert
    return listen


# --------------------------------------------------------------------------- peers


class TlsCharger(RawCharger):
    """A raw charger that connects over wss:// with its own TLS context."""

    def __init__(self, port: int, identity: str, ssl_context: ssl.SSLContext, **kw: Any) -> None:
        super().__init__(f"wss://127.0.0.1:{port}/ocpp", identity, **kw)
        self.ssl_context = ssl_context

    async def connect(self) -> Self:
        self._ws = await connect(
            self.url,
            ssl=self.ssl_context,
            subprotocols=self.offered,
            additional_headers=self.headers,
            compression=self.compression,
            max_size=self.max_size,
            open_timeout=self.open_timeout,
            ping_interval=None,
        )
        return self


class TlsCsmsPeer(CsmsPeer):
    """The CSMS peer behind TLS (``wss://127.0.0.1:<port>``); it records the client
    certificate each handshake presented."""

    def __init__(self, ssl_context: ssl.SSLContext, **kw: Any) -> None:
        super().__init__(**kw)
        self.ssl_context = ssl_context
        #: identity -> the peer certificate of each handshake (None: none presented).
        self.peer_certs: defaultdict[str, list[dict[str, Any] | None]] = defaultdict(list)

    async def start(self) -> Self:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            self._port or 0,
            subprotocols=self.subprotocols,
            compression=self.compression,
            process_request=self._process_request,
            ping_interval=None,
            ssl=self.ssl_context,
        )
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        cert = ws.transport.get_extra_info("peercert") if ws.transport is not None else None
        self.peer_certs[self.identity_of(request.path)].append(cert or None)
        return super()._process_request(ws, request)

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}"


def basic(identity: str, password: str | bytes) -> dict[str, str]:
    raw = password.encode() if isinstance(password, str) else password
    return {"Authorization": basic_header(identity, raw)}


async def refused_status(
    port: int,
    identity: str,
    headers: dict[str, str] | None = None,
    subprotocols: tuple[str, ...] = (OCPP16,),
) -> Response:
    """The HTTP response of a handshake the controller refuses (fails if it is accepted)."""
    raw = RawCharger(controller_url(port), identity, headers=headers, subprotocols=subprotocols)
    with pytest.raises(InvalidStatus) as refused:
        await raw.connect()
    return refused.value.response


async def handshake_fails(charger: RawCharger, *, use: bool = False) -> BaseException:
    """Connect (and with ``use``, send a Heartbeat: with TLS 1.3 a refused client
    certificate shows only then); the attempt must fail at once, not time out."""
    started = time.monotonic()
    with pytest.raises((InvalidHandshake, OSError, ConnectionClosed, EOFError)) as failed:
        await charger.connect()
        if use:
            await charger.call("Heartbeat", {}, timeout=3)
    assert not isinstance(failed.value, TimeoutError), "the attempt hung instead of failing"
    assert time.monotonic() - started < 2.5
    return failed.value


async def heartbeat(raw: RawCharger) -> list[Any]:
    answer = await raw.call("Heartbeat", {})
    assert answer[0] == 3 and "currentTime" in answer[2], answer
    return answer


def heartbeats_at_csms(csms: CsmsPeer, identity: str) -> int:
    return len(csms.received_calls(identity, "Heartbeat"))


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Log events emitted during the test (structlog)."""
    with structlog.testing.capture_logs() as captured:
        yield captured


def security_log(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == "security_event" and e["security_event"] == event]


async def eventually(predicate: Any, timeout: float = 5.0, what: str = "a condition") -> None:
    """Wait until ``await predicate()`` (or ``predicate()``) is true."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = predicate()
                if asyncio.iscoroutine(value):
                    value = await value
                if value:
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


# --------------------------------------------------------------------------- profile 1


async def test_wrong_password_gets_401_after_the_delay_and_opens_no_uplink(
    csms: CsmsPeer, controller_factory: ControllerFactory, logs: list[dict[str, Any]]
) -> None:
    """Wrong password (B16): HTTP 401 with WWW-Authenticate, only after auth_failure_delay;
    no uplink; a security event counted and logged without the password."""
    secret = "correct-password-0001"
    ctl = await controller_factory(
        listen={"security_profile": 1, "auth_failure_delay": 0.4},
        chargers={"CP-PW": {"password": secret}},
    )
    wrong = "wrong-password-0000001"
    started = time.monotonic()
    refusal = asyncio.create_task(refused_status(ctl.listen_port, "CP-PW", basic("CP-PW", wrong)))
    # Meanwhile another charger's handshake is not held up by the delay.
    other_login = basic("CP-OTHER", "other-password-0001")
    async with RawCharger(
        controller_url(ctl.listen_port), "CP-OTHER", headers=other_login
    ) as other:
        assert time.monotonic() - started < 0.4
        await heartbeat(other)
    response = await refusal
    elapsed = time.monotonic() - started

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert elapsed >= 0.4
    assert ctl.metrics.security_events["wrong_credentials"] == 1
    assert "CP-PW" not in csms.request_headers
    events = security_log(logs, "wrong_credentials")
    assert len(events) == 1 and events[0]["charger"] == "CP-PW"
    assert wrong not in repr(logs) and secret not in repr(logs)
    assert base64.b64encode(f"CP-PW:{wrong}".encode()).decode() not in repr(logs)
    # A delay, not a lock-out: the right password gets in right away.
    async with RawCharger(
        controller_url(ctl.listen_port), "CP-PW", headers=basic("CP-PW", secret)
    ) as raw:
        await heartbeat(raw)


async def test_missing_credentials_or_another_username_get_401(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """Profile 1: no Authorization, a non-Basic scheme, or a username other than the
    identity get 401; each is a security event."""
    secret = "correct-password-0002"
    ctl = await controller_factory(
        listen={"security_profile": 1, **FAST_401}, chargers={"CP-PW": {"password": secret}}
    )
    port = ctl.listen_port
    assert (await refused_status(port, "CP-PW")).status_code == 401
    bearer = {"Authorization": "Bearer " + secret}
    assert (await refused_status(port, "CP-PW", bearer)).status_code == 401
    other_user = basic("CP-OTHER", secret)
    assert (await refused_status(port, "CP-PW", other_user)).status_code == 401

    assert ctl.metrics.security_events["missing_credentials"] == 2
    assert ctl.metrics.security_events["wrong_credentials"] == 1
    assert "CP-PW" not in csms.request_headers


async def test_correct_password_is_admitted_and_passed_upstream(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """The right password is admitted; the CSMS sees the charger's own Authorization."""
    secret = "correct-password-0003"
    ctl = await controller_factory(
        listen={"security_profile": 1, **FAST_401}, chargers={"CP-PW": {"password": secret}}
    )
    headers = basic("CP-PW", secret)
    async with RawCharger(controller_url(ctl.listen_port), "CP-PW", headers=headers) as raw:
        await heartbeat(raw)
    assert heartbeats_at_csms(csms, "CP-PW") == 1
    assert csms.request_headers["CP-PW"][-1]["Authorization"] == headers["Authorization"]
    assert not ctl.metrics.security_events
    csms.assert_clean()


async def test_configured_csms_password_replaces_the_chargers_upstream(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """With ``csms_password`` the uplink carries the configured credentials, never the
    charger's own."""
    ctl = await controller_factory(
        listen={"security_profile": 1, **FAST_401},
        chargers={"CP-PW": {"password": "charger-side-pass-01", "csms_password": "upstream-01"}},
    )
    headers = basic("CP-PW", "charger-side-pass-01")
    async with RawCharger(controller_url(ctl.listen_port), "CP-PW", headers=headers) as raw:
        await heartbeat(raw)
    seen = csms.request_headers["CP-PW"][-1]["Authorization"]
    assert seen == basic_header("CP-PW", b"upstream-01")


@pytest.mark.parametrize(
    "sent",
    [OLD_KEY.encode(), OLD_KEY.upper().encode(), bytes.fromhex(OLD_KEY)],
    ids=["hex", "uppercase-hex", "raw-bytes"],
)
async def test_16_key_is_admitted_as_hex_text_or_raw_bytes(
    csms: CsmsPeer, controller_factory: ControllerFactory, sent: bytes
) -> None:
    """OCPP 1.6 (T7): a configured AuthorizationKey is matched by its hex text, in either
    case, or by the raw key bytes."""
    ctl = await controller_factory(
        listen={"security_profile": 1, **FAST_401}, chargers={"CP-16": {"password": OLD_KEY}}
    )
    headers = basic("CP-16", sent)
    async with RawCharger(controller_url(ctl.listen_port), "CP-16", headers=headers) as raw:
        await heartbeat(raw)


async def test_201_password_is_utf8_text_only(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """OCPP 2.0.1 (R34): the password is compared as UTF-8 text; the 1.6 raw-byte form of
    a hex key is refused, a non-ASCII password is admitted in UTF-8 only."""
    text = "Pässwört-ünïcödé-2.0.1"
    ctl = await controller_factory(
        listen={"security_profile": 1, **FAST_401},
        chargers={"CP-201": {"password": text}, "CP-201-HEX": {"password": OLD_KEY}},
    )
    port = ctl.listen_port
    sub = (OCPP201,)
    good = {"Authorization": basic_header("CP-201", text.encode("utf-8"))}
    async with RawCharger(controller_url(port), "CP-201", headers=good, subprotocols=sub) as raw:
        await heartbeat(raw)
    latin = {"Authorization": basic_header("CP-201", text.encode("latin-1"))}
    assert (await refused_status(port, "CP-201", latin, sub)).status_code == 401
    raw_key = basic("CP-201-HEX", bytes.fromhex(OLD_KEY))
    assert (await refused_status(port, "CP-201-HEX", raw_key, sub)).status_code == 401


async def test_unknown_identity_is_refused_404_without_uplink(
    csms: CsmsPeer, controller_factory: ControllerFactory, logs: list[dict[str, Any]]
) -> None:
    """Unknown identity under the default ``refuse`` (R2, B15): HTTP 404 before the
    upgrade, no uplink at the CSMS, a security event; a registered identity gets in."""
    ctl = await controller_factory(
        admission={"unknown_identities": "refuse"}, chargers={"CP-KNOWN": {}}
    )
    response = await refused_status(ctl.listen_port, "CP-NOPE")
    assert response.status_code == 404
    assert "CP-NOPE" not in csms.request_headers
    assert ctl.metrics.security_events["unknown_identity"] == 1
    assert security_log(logs, "unknown_identity")[0]["charger"] == "CP-NOPE"
    async with RawCharger(controller_url(ctl.listen_port), "CP-KNOWN") as raw:
        await heartbeat(raw)
    assert heartbeats_at_csms(csms, "CP-KNOWN") == 1


async def test_identity_accepted_by_the_csms_before_is_registered(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """An identity the CSMS accepted (BootNotification Accepted) is known afterwards,
    even under ``refuse``, once its acceptance was recorded."""
    ctl = await controller_factory(admission={"unknown_identities": "pass_through"})
    async with ChargerPeer16(controller_url(ctl.listen_port), "CP-BOOTED") as cp:
        await cp.boot()
        await eventually(lambda: ctl.gate.registered("CP-BOOTED"), what="the boot record")
    assert not await ctl.gate.registered("CP-NEVER")


# --------------------------------------------------------------------------- TLS downstream


async def test_plain_ws_on_a_profile_2_port_fails_the_handshake(
    csms: CsmsPeer, controller_factory: ControllerFactory, pki: Pki
) -> None:
    """Plain ws:// where TLS is required (B17): the handshake fails; no uplink."""
    ctl = await controller_factory(listen=tls_listen(pki, 2))
    raw = RawCharger(
        controller_url(ctl.listen_port),
        "CP-TLS",
        headers=basic("CP-TLS", "password-0001"),
        open_timeout=3,
    )
    await handshake_fails(raw)
    assert not csms.request_headers


async def test_profile_2_tls_with_basic_is_admitted(
    csms: CsmsPeer, controller_factory: ControllerFactory, pki: Pki
) -> None:
    """Profile 2: TLS 1.2+ with the test certificate plus the right Basic password gets
    in and talks to the CSMS; a wrong password over TLS gets 401."""
    ctl = await controller_factory(
        listen=tls_listen(pki, 2), chargers={"CP-TLS2": {"password": "tls-password-0001"}}
    )
    ctx = pki.client_context()
    headers = basic("CP-TLS2", "tls-password-0001")
    async with TlsCharger(ctl.listen_port, "CP-TLS2", ctx, headers=headers) as raw:
        await heartbeat(raw)
        transport = raw.ws.transport
        assert transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    assert heartbeats_at_csms(csms, "CP-TLS2") == 1

    wrong = TlsCharger(
        ctl.listen_port, "CP-TLS2", ctx, headers=basic("CP-TLS2", "not-the-password-01")
    )
    with pytest.raises(InvalidStatus) as refused:
        await wrong.connect()
    assert refused.value.response.status_code == 401


def _tls11_context(ctx: ssl.SSLContext) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def tls11_unavailable(pki: Pki) -> str | None:
    """Why this OpenSSL cannot complete a TLS 1.1 handshake with itself, or None if it can
    (probed in memory, no socket)."""
    try:
        server = _tls11_context(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        server.load_cert_chain(pki.server_cert, pki.server_key)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        client = _tls11_context(client)
    except (ssl.SSLError, ValueError) as exc:
        return f"TLS 1.1 cannot be configured: {exc}"
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    try:
        for _ in range(10):
            for i, (obj, out, peer_in) in enumerate(((c, c_out, s_in), (s, s_out, c_in))):
                if not done[i]:
                    try:
                        obj.do_handshake()
                        done[i] = True
                    except ssl.SSLWantReadError:
                        pass
                peer_in.write(out.read())
            if all(done):
                break
    except ssl.SSLError as exc:
        return f"the local OpenSSL refuses TLS 1.1 ({exc.reason})"
    if not all(done) or c.version() != "TLSv1.1":
        return "the local OpenSSL did not negotiate TLS 1.1 with itself"
    return None


async def test_tls_11_is_refused(
    csms: CsmsPeer, controller_factory: ControllerFactory, pki: Pki
) -> None:
    """A charger that offers only TLS 1.1 is refused at the TLS layer (R35, B17); the
    same client allowed TLS 1.2 gets in, so the version is what was refused."""
    reason = tls11_unavailable(pki)
    if reason is not None:
        pytest.skip(reason)
    ctl = await controller_factory(
        listen=tls_listen(pki, 2), chargers={"CP-OLD": {"password": "tls-password-0001"}}
    )
    headers = basic("CP-OLD", "tls-password-0001")

    def client(tls11: bool) -> ssl.SSLContext:
        ctx = pki.client_context()
        ctx.check_hostname = False  # a SECLEVEL 0 client: checks the chain, not the name
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        return _tls11_context(ctx) if tls11 else ctx

    old = TlsCharger(ctl.listen_port, "CP-OLD", client(True), headers=headers, open_timeout=3)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await old.connect()
    assert not csms.request_headers
    async with TlsCharger(ctl.listen_port, "CP-OLD", client(False), headers=headers) as ok:
        await heartbeat(ok)
        assert ok.ws.transport.get_extra_info("ssl_object").version() != "TLSv1.1"


async def test_profile_3_certificate_naming_the_identity_is_admitted(
    csms: CsmsPeer, controller_factory: ControllerFactory, pki: Pki
) -> None:
    """Profile 3: a client certificate of the site CA whose CN is the identity gets in,
    without Basic credentials."""
    ctl = await controller_factory(listen=tls_listen(pki, 3))
    ctx = pki.client_context("CP-MTLS")
    async with TlsCharger(ctl.listen_port, "CP-MTLS", ctx) as raw:
        await heartbeat(raw)
    assert heartbeats_at_csms(csms, "CP-MTLS") == 1
    assert not ctl.metrics.security_events


async def test_profile_3_certificate_of_another_organisation_is_refused(
    csms: CsmsPeer, controller_factory: ControllerFactory, pki: Pki
) -> None:
    """Profile 3 (B18, O != CPO): with ``listen.client_org`` set, a certificate of the
    site CA naming the identity but another organisation is refused and logged."""
    ctl = await controller_factory(listen={**tls_listen(pki, 3), "client_org": "Example CPO"})
    stranger = TlsCharger(ctl.listen_port, "CP-MTLS", pki.client_context("CP-MTLS"))
    with pytest.raises(InvalidStatus) as refused:
        await stranger.connect()
    assert refused.value.response.status_code == 401
    assert ctl.metrics.security_events["certificate_organisation_mismatch"] == 1
    assert "CP-MTLS" not in csms.request_headers


async def test_profile_3_certificate_of_another_identity_is_refused_and_logged(
    csms: CsmsPeer, controller_factory: ControllerFactory, pki: Pki, logs: list[dict[str, Any]]
) -> None:
    """Profile 3 (T6, B18): a valid certificate whose CN names another charger is refused
    before the upgrade, logged as a security event, and opens no uplink."""
    ctl = await controller_factory(listen=tls_listen(pki, 3))
    ctx = pki.client_context("CP-OTHER")
    impostor = TlsCharger(ctl.listen_port, "CP-VICTIM", ctx)
    with pytest.raises(InvalidStatus) as refused:
        await impostor.connect()
    assert refused.value.response.status_code in (401, 403)
    assert ctl.metrics.security_events["certificate_identity_mismatch"] == 1
    event = security_log(logs, "certificate_identity_mismatch")[0]
    assert event["charger"] == "CP-VICTIM"
    assert "CP-VICTIM" not in csms.request_headers


@pytest.mark.parametrize("case", ["no-certificate", "untrusted-ca", "expired", "basic-only"])
async def test_profile_3_without_a_valid_certificate_fails_the_tls_handshake(
    csms: CsmsPeer, controller_factory: ControllerFactory, pki: Pki, case: str
) -> None:
    """Profile 3 (B17, B18): no client certificate, one from an untrusted CA, an expired
    one, or Basic credentials instead of a certificate: the connection fails; no uplink."""
    ctl = await controller_factory(listen=tls_listen(pki, 3), chargers={"CP-M": {}})
    headers = None
    if case == "no-certificate":
        ctx = pki.client_context()
    elif case == "untrusted-ca":
        ctx = pki.client_context("CP-M", issuer=pki.rogue)
    elif case == "expired":
        ctx = pki.client_context("CP-M", expired=True)
    else:
        ctx = pki.client_context()
        headers = basic("CP-M", "password-00000001")
    charger = TlsCharger(ctl.listen_port, "CP-M", ctx, headers=headers, open_timeout=3)
    await handshake_fails(charger, use=True)
    assert "CP-M" not in csms.request_headers


async def test_tls_handshake_failures_are_logged_as_security_events(
    csms: CsmsPeer, controller_factory: ControllerFactory, pki: Pki
) -> None:
    """SCENARIOS 16 / R37: plain ws on a TLS port and a certificate from an untrusted CA
    are refused *and logged as security events* (InvalidTLSVersion-like)."""
    ctl = await controller_factory(listen=tls_listen(pki, 3))
    plain = RawCharger(controller_url(ctl.listen_port), "CP-X", open_timeout=3)
    await handshake_fails(plain)
    rogue = TlsCharger(
        ctl.listen_port, "CP-X", pki.client_context("CP-X", issuer=pki.rogue), open_timeout=3
    )
    await handshake_fails(rogue, use=True)
    await asyncio.sleep(0.2)
    assert sum(ctl.metrics.security_events.values()) >= 2, dict(ctl.metrics.security_events)


async def test_profile_3_serial_match_closes_on_a_boot_serial_mismatch(
    csms: CsmsPeer, controller_factory: ControllerFactory, pki: Pki
) -> None:
    """``cn_match = "serial"`` (R36, T6, B18; 2.0.1 B01.FR.12): a charger whose
    BootNotification serial number is not in its certificate's CN is closed and logged;
    the BootNotification does not reach the CSMS."""
    ctl = await controller_factory(listen=tls_listen(pki, 3, cn_match="serial"))
    ctx = pki.client_context("SN-0001")
    async with TlsCharger(ctl.listen_port, "CP-SER", ctx) as raw:
        await raw.send(
            '[2,"b1","BootNotification",{"chargePointVendor":"V","chargePointModel":"M",'
            '"chargePointSerialNumber":"SN-9999"}]'
        )
        received: list[Any] = []
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            async with asyncio.timeout(3):
                while True:
                    received.append(await raw.recv())
        closed = raw.ws.close_code
    assert closed == 1008, f"the charger was not closed; it received {received}"
    assert not csms.received_calls("CP-SER", "BootNotification")
    assert sum(ctl.metrics.security_events.values()) >= 1


async def test_profile_3_serial_match_admits_a_matching_serial(
    csms: CsmsPeer, controller_factory: ControllerFactory, pki: Pki
) -> None:
    """``cn_match = "serial"``: a BootNotification whose serial is in the CN goes through."""
    ctl = await controller_factory(listen=tls_listen(pki, 3, cn_match="serial"))
    ctx = pki.client_context("SN-0002")
    async with TlsCharger(ctl.listen_port, "CP-SER2", ctx) as raw:
        answer = await raw.call(
            "BootNotification",
            {
                "chargePointVendor": "V",
                "chargePointModel": "M",
                "chargePointSerialNumber": "SN-0002",
            },
        )
    assert answer[0] == 3 and answer[2]["status"] == "Accepted"


# --------------------------------------------------------------------------- TLS upstream


@pytest.fixture
async def tls_csms(pki: Pki) -> Any:
    """A CSMS peer behind TLS with a certificate of the test CA."""
    async with TlsCsmsPeer(pki.csms_context()) as peer:
        yield peer


@pytest.fixture
async def mtls_csms(pki: Pki) -> Any:
    """A profile 3 CSMS peer: TLS that requires a client certificate of the test CA."""
    async with TlsCsmsPeer(pki.csms_context(require_client_cert=True)) as peer:
        yield peer


async def test_uplink_to_a_tls_csms_with_the_right_ca_bundle(
    tls_csms: TlsCsmsPeer, controller_factory: ControllerFactory, pki: Pki
) -> None:
    """``csms.url = wss://...`` with the right ``ca_bundle``: the uplink verifies and
    works."""
    ctl = await controller_factory(csms={"url": tls_csms.url, "ca_bundle": pki.ca_cert})
    async with RawCharger(controller_url(ctl.listen_port), "CP-UP") as raw:
        await heartbeat(raw)
    assert heartbeats_at_csms(tls_csms, "CP-UP") == 1
    tls_csms.assert_clean()


async def test_uplink_with_a_wrong_ca_bundle_is_served_offline(
    tls_csms: TlsCsmsPeer, controller_factory: ControllerFactory, pki: Pki
) -> None:
    """A CSMS certificate that does not verify against ``ca_bundle`` is never talked to:
    the charger is served offline (``[offline] mode = serve``)."""
    ctl = await controller_factory(
        csms={"url": tls_csms.url, "ca_bundle": pki.rogue_ca_cert},
        uplink={"reconnect_min": 5, "reconnect_max": 5, "reconnect_jitter": 0},
    )
    async with RawCharger(controller_url(ctl.listen_port), "CP-UP") as raw:
        await heartbeat(raw)
        assert ctl.chargers.sessions["CP-UP"].uplink is None
    assert not tls_csms.request_headers
    assert ctl.metrics.offline_answers["Heartbeat"] == 1


async def test_uplink_with_a_wrong_ca_bundle_refuses_the_charger_in_strict_mode(
    tls_csms: TlsCsmsPeer, controller_factory: ControllerFactory, pki: Pki
) -> None:
    """Wrong ``ca_bundle`` with ``[offline] mode = strict``: the charger gets 502."""
    ctl = await controller_factory(
        csms={"url": tls_csms.url, "ca_bundle": pki.rogue_ca_cert}, offline={"mode": "strict"}
    )
    response = await refused_status(ctl.listen_port, "CP-UP")
    assert response.status_code == 502
    assert not tls_csms.request_headers


async def test_uplink_without_ca_bundle_does_not_trust_a_private_ca(
    tls_csms: TlsCsmsPeer, controller_factory: ControllerFactory
) -> None:
    """No ``ca_bundle``: the system trust store, which does not hold the test CA."""
    ctl = await controller_factory(csms={"url": tls_csms.url}, offline={"mode": "strict"})
    assert (await refused_status(ctl.listen_port, "CP-UP")).status_code == 502
    assert not tls_csms.request_headers


async def test_profile_3_csms_gets_the_controllers_own_certificate(
    mtls_csms: TlsCsmsPeer, controller_factory: ControllerFactory, pki: Pki
) -> None:
    """A profile 3 CSMS (R31, T8) sees the controller's ``client_cert`` on every uplink,
    whichever charger it carries."""
    ctl = await controller_factory(
        csms={
            "url": mtls_csms.url,
            "ca_bundle": pki.ca_cert,
            "client_cert": pki.controller_cert,
            "client_key": pki.controller_key,
        }
    )
    for identity in ("CP-A", "CP-B"):
        async with RawCharger(controller_url(ctl.listen_port), identity) as raw:
            await heartbeat(raw)
        certs = mtls_csms.peer_certs[identity]
        assert len(certs) == 1 and certificate_cn(certs[0]) == pki.controller_cn
    mtls_csms.assert_clean()


async def test_profile_3_csms_without_the_controllers_certificate_is_not_reached(
    mtls_csms: TlsCsmsPeer, controller_factory: ControllerFactory, pki: Pki
) -> None:
    """Without ``client_cert`` a profile 3 CSMS refuses the TLS handshake: the charger is
    refused in strict mode."""
    ctl = await controller_factory(
        csms={"url": mtls_csms.url, "ca_bundle": pki.ca_cert}, offline={"mode": "strict"}
    )
    assert (await refused_status(ctl.listen_port, "CP-A")).status_code == 502
    assert not mtls_csms.peer_certs


# --------------------------------------------------------------------------- learned credentials


async def stored_credential(ctl: Controller, identity: str) -> tuple[str, str] | None:
    return await ctl.store.credential(identity)


async def test_learned_credentials_admit_while_the_csms_is_down(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """pass_through + learn_credentials: Basic credentials the CSMS accepted are kept as a
    salted hash; while the CSMS is down the same password is admitted and a wrong one
    refused."""
    ctl = await controller_factory(
        listen={"security_profile": 1, **FAST_401},
        uplink={"reconnect_min": 5, "reconnect_max": 5, "reconnect_jitter": 0},
    )
    password = "learned-password-0001"
    url = controller_url(ctl.listen_port)
    async with RawCharger(url, "CP-LEARN", headers=basic("CP-LEARN", password)) as raw:
        await heartbeat(raw)
    stored = await stored_credential(ctl, "CP-LEARN")
    assert stored is not None and stored[1] == "csms_accepted"
    assert password not in stored[0]
    assert verify_password(password.encode(), Credential.from_text(stored[0]), "ocpp2.0.1")

    await csms.stop()
    async with RawCharger(url, "CP-LEARN", headers=basic("CP-LEARN", password)) as raw:
        await heartbeat(raw)  # answered offline
    assert ctl.metrics.offline_answers["Heartbeat"] == 1
    wrong = basic("CP-LEARN", "learned-password-0002")
    assert (await refused_status(ctl.listen_port, "CP-LEARN", wrong)).status_code == 401
    assert (await refused_status(ctl.listen_port, "CP-LEARN")).status_code == 401


async def test_learned_credentials_do_not_overrule_the_csms_while_it_is_up(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """A learned hash is a copy of what the CSMS accepted, kept for outages (README:
    "so the charger is admitted while the uplink is down"). While the CSMS is up it
    decides: a new password it accepts (rotated where the controller could not see it,
    e.g. a replaced charger) gets in, and becomes the one kept."""
    ctl = await controller_factory(listen={"security_profile": 1, **FAST_401})
    url = controller_url(ctl.listen_port)
    first, second = "learned-password-0001", "rotated-password-0002"
    async with RawCharger(url, "CP-ROT", headers=basic("CP-ROT", first)) as raw:
        await heartbeat(raw)
    assert await stored_credential(ctl, "CP-ROT") is not None
    try:
        async with RawCharger(url, "CP-ROT", headers=basic("CP-ROT", second)) as raw:
            await heartbeat(raw)
    except InvalidStatus as exc:
        pytest.fail(
            f"HTTP {exc.response.status_code} from the controller for a password the CSMS "
            f"accepts; the CSMS saw {len(csms.request_headers['CP-ROT'])} handshake(s)"
        )
    stored = await stored_credential(ctl, "CP-ROT")
    assert stored is not None
    assert verify_password(second.encode(), Credential.from_text(stored[0]), "ocpp2.0.1")


async def test_credentials_the_csms_refused_are_not_learned(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """A handshake the CSMS refuses (401) is relayed as 401 and its credentials are not
    kept."""
    csms.refusals["CP-BAD"] = 401
    ctl = await controller_factory(listen={"security_profile": 1, **FAST_401})
    headers = basic("CP-BAD", "refused-password-0001")
    assert (await refused_status(ctl.listen_port, "CP-BAD", headers)).status_code == 401
    assert await stored_credential(ctl, "CP-BAD") is None
    assert ctl.metrics.security_events["csms_refused_401"] == 1


async def test_credentials_are_not_learned_when_learning_is_off(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """``learn_credentials = false``: nothing is kept."""
    ctl = await controller_factory(
        listen={"security_profile": 1, **FAST_401}, admission={"learn_credentials": False}
    )
    headers = basic("CP-NOLEARN", "some-password-00001")
    async with RawCharger(controller_url(ctl.listen_port), "CP-NOLEARN", headers=headers) as raw:
        await heartbeat(raw)
    assert await stored_credential(ctl, "CP-NOLEARN") is None


# ------------------------------------------------------------------- key rotation (R43, F14)


async def wait_key_change(ctl: Controller, identity: str) -> None:
    async def changed() -> bool:
        stored = await stored_credential(ctl, identity)
        return stored is not None and stored[1] == "key_change"

    await eventually(changed, what=f"the key change of {identity} to be kept")


@pytest.mark.parametrize("origin", ["learned", "configured"])
async def test_authorization_key_change_is_used_upstream_and_offline(
    csms: CsmsPeer, controller_factory: ControllerFactory, origin: str
) -> None:
    """R43/F14 on 1.6: ChangeConfiguration(AuthorizationKey) accepted by the charger makes
    the next uplink reconnect carry the new key; offline the old key is refused and the
    new one admitted (whether the old one was configured or learned)."""
    chargers = {"CP-KEY": {"password": OLD_KEY}} if origin == "configured" else {}
    ctl = await controller_factory(
        listen={"security_profile": 1, **FAST_401}, uplink=QUICK_UPLINK, chargers=chargers
    )
    url = controller_url(ctl.listen_port)
    old = basic("CP-KEY", OLD_KEY)
    new = basic("CP-KEY", NEW_KEY)
    async with ChargerPeer16(url, "CP-KEY", headers=old) as cp:
        await cp.boot()
        await csms.wait_connected("CP-KEY")
        answer = await csms.call(
            "CP-KEY", call16.ChangeConfiguration(key="AuthorizationKey", value=NEW_KEY)
        )
        assert answer.status == "Accepted"
        await wait_key_change(ctl, "CP-KEY")
        assert ctl.metrics.security_events["credentials_changed"] == 1

        # The CSMS drops the uplink (going away): the controller reconnects by itself.
        before = len(csms.request_headers["CP-KEY"])
        await csms.close("CP-KEY", 1001)
        await csms.wait_connected("CP-KEY")
        assert len(csms.request_headers["CP-KEY"]) > before
        assert csms.request_headers["CP-KEY"][-1]["Authorization"] == new["Authorization"]
        await cp.call(call16.Heartbeat())

    await csms.stop()
    assert (await refused_status(ctl.listen_port, "CP-KEY", old)).status_code == 401
    async with RawCharger(url, "CP-KEY", headers=new) as raw:
        await heartbeat(raw)
    async with RawCharger(url, "CP-KEY", headers=basic("CP-KEY", bytes.fromhex(NEW_KEY))) as raw:
        await heartbeat(raw)  # the raw-byte form of the new key too


async def test_key_change_also_replaces_a_configured_csms_password_upstream(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """R43/R34 with ``csms_password`` configured: the CSMS rotated the key it knows this
    charger by and will refuse the old one from now on, so the next uplink must carry
    the new key, not the configured password."""
    ctl = await controller_factory(
        listen={"security_profile": 1, **FAST_401},
        uplink=QUICK_UPLINK,
        chargers={"CP-UPW": {"password": OLD_KEY, "csms_password": "upstream-password-1"}},
    )
    url = controller_url(ctl.listen_port)
    async with ChargerPeer16(url, "CP-UPW", headers=basic("CP-UPW", OLD_KEY)) as cp:
        await csms.wait_connected("CP-UPW")
        seen = csms.request_headers["CP-UPW"][-1]["Authorization"]
        assert seen == basic_header("CP-UPW", b"upstream-password-1")
        answer = await csms.call(
            "CP-UPW", call16.ChangeConfiguration(key="AuthorizationKey", value=NEW_KEY)
        )
        assert answer.status == "Accepted"
        await wait_key_change(ctl, "CP-UPW")
        await csms.close("CP-UPW", 1001)
        await csms.wait_connected("CP-UPW")
        seen = csms.request_headers["CP-UPW"][-1]["Authorization"]
        await cp.call(call16.Heartbeat())
    assert seen == basic_header("CP-UPW", NEW_KEY.encode()), (
        "the uplink still carries the configured csms_password after the CSMS changed the key"
    )


async def test_basic_auth_password_change_on_201_is_used_upstream_and_offline(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """R43/F14 on 2.0.1: SetVariables(SecurityCtrlr.BasicAuthPassword) accepted by the
    charger: the next uplink carries the new UTF-8 password; offline old refused, new in."""
    old_password, new_password = "old-password-2.0.1-x", "nëw-pässwörd-2.0.1-ÿ"
    ctl = await controller_factory(
        listen={"security_profile": 1, **FAST_401},
        uplink=QUICK_UPLINK,
        chargers={"CP-201": {"password": old_password}},
    )
    url = controller_url(ctl.listen_port)
    old = basic("CP-201", old_password)
    new = basic("CP-201", new_password)
    async with ChargerPeer201(url, "CP-201", headers=old) as cp:
        await csms.wait_connected("CP-201")
        answer = await csms.call(
            "CP-201",
            call201.SetVariables(
                set_variable_data=[
                    {
                        "attribute_value": new_password,
                        "component": {"name": "SecurityCtrlr"},
                        "variable": {"name": "BasicAuthPassword"},
                    }
                ]
            ),
        )
        assert answer.set_variable_result[0]["attribute_status"] == "Accepted"
        await wait_key_change(ctl, "CP-201")
        await csms.close("CP-201", 1001)
        await csms.wait_connected("CP-201")
        assert csms.request_headers["CP-201"][-1]["Authorization"] == new["Authorization"]
        await cp.call(call201.Heartbeat())

    await csms.stop()
    sub = (OCPP201,)
    assert (await refused_status(ctl.listen_port, "CP-201", old, sub)).status_code == 401
    async with RawCharger(url, "CP-201", headers=new, subprotocols=sub) as raw:
        await heartbeat(raw)


async def test_key_change_the_charger_rejects_changes_nothing(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """A ChangeConfiguration(AuthorizationKey) the charger answers Rejected leaves the
    uplink and offline credentials as they were."""
    ctl = await controller_factory(
        listen={"security_profile": 1, **FAST_401}, chargers={"CP-REJ": {"password": OLD_KEY}}
    )
    url = controller_url(ctl.listen_port)
    old = basic("CP-REJ", OLD_KEY)
    async with RawCharger(url, "CP-REJ", headers=old) as raw:
        await csms.wait_connected("CP-REJ")
        change = asyncio.create_task(
            csms.call("CP-REJ", call16.ChangeConfiguration(key="AuthorizationKey", value=NEW_KEY))
        )
        incoming = await raw.recv_json()
        assert incoming[0] == 2 and incoming[2] == "ChangeConfiguration"
        await raw.send(f'[3,"{incoming[1]}",{{"status":"Rejected"}}]')
        assert (await change).status == "Rejected"
        await heartbeat(raw)
    assert await stored_credential(ctl, "CP-REJ") is None
    assert ctl.metrics.security_events["credentials_changed"] == 0
    await csms.stop()
    async with RawCharger(url, "CP-REJ", headers=old) as raw:
        await heartbeat(raw)
    new = basic("CP-REJ", NEW_KEY)
    assert (await refused_status(ctl.listen_port, "CP-REJ", new)).status_code == 401


# --------------------------------------------------------------------------- F8, per-IP cap


async def test_newer_connection_replaces_the_older_with_one_uplink_at_a_time(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """F8: a second authenticated connection of a connected identity replaces the first,
    which is closed 1008; the CSMS never sees two live connections of the identity."""
    ctl = await controller_factory(
        listen={"security_profile": 1, **FAST_401}, chargers={"CP-F8": {"password": OLD_KEY}}
    )
    url = controller_url(ctl.listen_port)
    headers = basic("CP-F8", OLD_KEY)
    async with RawCharger(url, "CP-F8", headers=headers) as first:
        await heartbeat(first)
        async with RawCharger(url, "CP-F8", headers=headers) as second:
            closed = await first.wait_closed()
            assert closed.code == 1008
            await heartbeat(second)
            await eventually(lambda: len(csms.history["CP-F8"]) == 2, what="the second uplink")
    assert heartbeats_at_csms(csms, "CP-F8") == 2
    assert not [v for v in csms.violations if "second live connection" in v], csms.violations
    csms.assert_clean()


async def test_unauthenticated_second_connection_does_not_evict_the_first(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """F8: a second connection with a wrong password (or none) gets 401 and the live
    session goes on undisturbed."""
    ctl = await controller_factory(
        listen={"security_profile": 1, **FAST_401}, chargers={"CP-F8": {"password": OLD_KEY}}
    )
    url = controller_url(ctl.listen_port)
    async with RawCharger(url, "CP-F8", headers=basic("CP-F8", OLD_KEY)) as first:
        await heartbeat(first)
        bad = basic("CP-F8", NEW_KEY)
        assert (await refused_status(ctl.listen_port, "CP-F8", bad)).status_code == 401
        assert (await refused_status(ctl.listen_port, "CP-F8")).status_code == 401
        await heartbeat(first)
        assert first.ws.close_code is None
    assert len(csms.history["CP-F8"]) == 1
    assert heartbeats_at_csms(csms, "CP-F8") == 2


async def test_checked_newcomer_replaces_before_its_uplink_opens(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """F8, documented rule: a newcomer whose password the controller checked replaces the
    old session before its own uplink opens (one uplink per identity at a time), even
    if the CSMS then refuses the newcomer."""
    ctl = await controller_factory(
        listen={"security_profile": 1, **FAST_401}, chargers={"CP-F8": {"password": OLD_KEY}}
    )
    url = controller_url(ctl.listen_port)
    async with RawCharger(url, "CP-F8", headers=basic("CP-F8", OLD_KEY)) as first:
        await heartbeat(first)
        csms.refusals["CP-F8"] = 403
        good = basic("CP-F8", OLD_KEY)
        assert (await refused_status(ctl.listen_port, "CP-F8", good)).status_code == 403
        del csms.refusals["CP-F8"]
        await first.wait_closed()
        assert first.ws.close_code == 1008
    assert csms.violations == []


async def test_per_ip_connection_cap_gives_429(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """``max_connections_per_ip``: the connection over the cap gets 429 and no uplink;
    once one closes, a new one is admitted again."""
    ctl = await controller_factory(listen={"max_connections_per_ip": 2})
    url = controller_url(ctl.listen_port)
    async with RawCharger(url, "CP-IP1") as a, RawCharger(url, "CP-IP2") as b:
        await heartbeat(a)
        await heartbeat(b)
        assert (await refused_status(ctl.listen_port, "CP-IP3")).status_code == 429
        assert "CP-IP3" not in csms.request_headers
        assert ctl.metrics.security_events["ip_connection_cap"] == 1
        await b.close()
        await eventually(lambda: "CP-IP2" not in ctl.chargers.sessions, what="CP-IP2 to go")
        async with RawCharger(url, "CP-IP3") as c:
            await heartbeat(c)
