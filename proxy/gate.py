"""The gate: who gets in, checked before the WebSocket upgrade.

Admission (:mod:`policies.admission`) over what the controller knows of an identity:
registered in the settings (``[chargers.<identity>]``), accepted by the CSMS before (the
store's charger registry), Basic credentials configured or learned (salted hashes), and
the client certificate of a mutual-TLS connection. Every refusal is a security event:
a structured log line and a counter; no password or header value is ever logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from config.settings import Settings
from policies.admission import (
    Credential,
    Verdict,
    admit,
    hash_password,
    parse_basic,
    verify_password,
)
from proxy.metrics import Metrics
from proxy.store import Store, StoreError


def _tls_failure_recorder(on_failure: Callable[[str], None]) -> type[ssl.SSLObject]:
    """An SSLObject class that reports failed TLS handshakes (asyncio drops them)."""

    class _Recording(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as exc:
                on_failure(str(exc.reason or type(exc).__name__))
                raise

    return _Recording


def server_tls(
    settings: Settings, on_failure: Callable[[str], None] | None = None
) -> ssl.SSLContext | None:
    """The TLS context of the charger-facing server for profiles 2 and 3."""
    ls = settings.listen
    if ls.security_profile < 2:
        return None
    assert ls.tls_cert is not None and ls.tls_key is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if on_failure is not None:
        ctx.sslobject_class = _tls_failure_recorder(on_failure)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(ls.tls_cert, ls.tls_key)
    if ls.security_profile == 3:
        assert ls.client_ca is not None
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(ls.client_ca)
    return ctx


def client_tls(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the uplinks (wss://): verification on, own certificate if set."""
    csms = settings.csms
    if not csms.url.startswith("wss://"):
        return None
    ctx = ssl.create_default_context(
        cafile=str(csms.ca_bundle) if csms.ca_bundle is not None else None
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if csms.client_cert is not None:
        ctx.load_cert_chain(csms.client_cert, csms.client_key)
    return ctx


def certificate_cn(peercert: dict[str, Any] | None) -> str | None:
    """The common name of a peer certificate as ``ssl`` reports it."""
    return certificate_field(peercert, "commonName")


def certificate_field(peercert: dict[str, Any] | None, name: str) -> str | None:
    """A subject field (``commonName``, ``organizationName`` ...) of a peer certificate."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == name:
                return str(value)
    return None


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    #: The identity is in the settings or was accepted by the CSMS before.
    registered: bool
    #: Answer 401 if the CSMS cannot be asked (credentials only it can check).
    refuse_offline: bool = False


class Gate:
    """Admission and authentication of chargers."""

    def __init__(self, settings: Settings, store: Store, metrics: Metrics, log: Any) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.log = log
        self._configured: dict[str, Credential] = {}
        for identity, charger in settings.chargers.items():
            if charger.password is not None:
                secret = charger.password.get_secret_value().encode()
                self._configured[identity] = hash_password(secret, os.urandom(16))
        # identity -> keyed digest of the last password verified, so that a charger's
        # reconnects do not pay the hash again.
        self._verified: dict[str, bytes] = {}
        self._key = os.urandom(32)

    def security_event(self, event: str, **fields: Any) -> None:
        self.metrics.security_events[event] += 1
        self.log.warning("security_event", security_event=event, **fields)

    async def registered(self, identity: str) -> bool:
        if identity in self.settings.chargers:
            return True
        try:
            record = await self.store.charger(identity)
        except StoreError:
            return False
        return bool(record and record["accepted"])

    async def credential(self, identity: str) -> Credential | None:
        """The hash to check a charger's password against: one the CSMS set since
        (a key change), else the configured one, else one learned from the CSMS."""
        return (await self._credential(identity))[0]

    async def _credential(self, identity: str) -> tuple[Credential | None, str | None]:
        try:
            stored = await self.store.credential(identity)
        except StoreError:
            stored = None
        configured = self._configured.get(identity)
        if stored is not None and (configured is None or stored[1] == "key_change"):
            try:
                return Credential.from_text(stored[0]), stored[1]
            except ValueError:
                pass
        return configured, "configured" if configured is not None else None

    async def _check(
        self, identity: str, password: bytes, credential: Credential, version: str
    ) -> bool:
        mark = hmac.new(self._key, identity.encode() + b"\0" + password, hashlib.sha256).digest()
        known = self._verified.get(identity)
        if known is not None and hmac.compare_digest(known, mark):
            return True
        ok = await asyncio.to_thread(verify_password, password, credential, version)
        if ok:
            self._verified[identity] = mark
        return ok

    async def decide(
        self,
        identity: str,
        authorization: str | None,
        version: str,
        peercert: dict[str, Any] | None,
        remote: str,
    ) -> Decision:
        """The verdict for one handshake (a refusal is logged as a security event)."""
        profile = self.settings.listen.security_profile
        if profile == 3 and self.settings.listen.cn_match == "identity":
            cn = certificate_cn(peercert)
            if cn != identity:
                self.security_event(
                    "certificate_identity_mismatch", charger=identity, remote=remote
                )
                await asyncio.sleep(self.settings.listen.auth_failure_delay)
                return Decision(Verdict.UNAUTHORIZED, registered=False)
        org = self.settings.listen.client_org
        if (
            profile == 3
            and org is not None
            and certificate_field(peercert, "organizationName") != org
        ):
            self.security_event(
                "certificate_organisation_mismatch", charger=identity, remote=remote
            )
            await asyncio.sleep(self.settings.listen.auth_failure_delay)
            return Decision(Verdict.UNAUTHORIZED, registered=False)
        registered = await self.registered(identity)
        credentials = parse_basic(authorization)
        credential, source = (None, None)
        if profile in (1, 2):
            credential, source = await self._credential(identity)
        password_ok: bool | None = None
        if credentials is not None and credential is not None and credentials[0] == identity:
            password_ok = await self._check(identity, credentials[1], credential, version)
        verdict = admit(
            registered=registered,
            unknown_identities=self.settings.admission.unknown_identities,
            profile=profile,
            credentials=credentials,
            identity=identity,
            credential=credential,
            password_ok=password_ok,
        )
        if verdict is Verdict.UNAUTHORIZED and password_ok is False and source == "csms_accepted":
            # A hash learned from the CSMS only stands in for it while it is down: while
            # it is up, it decides (the charger may have been re-keyed or replaced).
            return Decision(Verdict.ASK_CSMS, registered, refuse_offline=True)
        if verdict is Verdict.REFUSE:
            self.security_event("unknown_identity", charger=identity, remote=remote)
        elif verdict is Verdict.UNAUTHORIZED:
            reason = "missing_credentials" if credentials is None else "wrong_credentials"
            self.security_event(reason, charger=identity, remote=remote)
            await asyncio.sleep(self.settings.listen.auth_failure_delay)
        return Decision(verdict, registered)

    async def unauthorized_offline(self, identity: str, remote: str) -> None:
        """Credentials only the CSMS could check, while it cannot be asked."""
        self.security_event("unverifiable_credentials_offline", charger=identity, remote=remote)
        await asyncio.sleep(self.settings.listen.auth_failure_delay)

    async def learn(self, identity: str, authorization: str | None, source: str) -> None:
        """Keep a hash of Basic credentials the CSMS accepted, or of a key it set
        (``source="key_change"``: kept even over a configured password, which the
        charger no longer uses)."""
        if source != "key_change" and (
            not self.settings.admission.learn_credentials or identity in self._configured
        ):
            return
        credentials = parse_basic(authorization)
        if credentials is None or credentials[0] != identity:
            return
        known = await self.credential(identity)
        if (
            source != "key_change"
            and known is not None
            and await self._check(identity, credentials[1], known, "ocpp2.0.1")
        ):
            return  # already known: nothing to hash again
        credential = await asyncio.to_thread(hash_password, credentials[1], os.urandom(16))
        self._verified.pop(identity, None)
        await self.store.save_credential(identity, credential.to_text(), source)
