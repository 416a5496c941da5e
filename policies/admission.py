"""Who may connect: admission of charger identities, and their Basic credentials.

Pure decisions: the downstream server asks, given what it knows of an identity, whether
to admit it, refuse it (HTTP 404 / 401), or let the CSMS decide. Passwords are kept as
salted PBKDF2 hashes and compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from enum import Enum

PBKDF2_ITERATIONS = 20_000
_SALT_BYTES = 16


class Verdict(Enum):
    ADMIT = "admit"  # serve it (the uplink is opened as usual)
    ASK_CSMS = "ask_csms"  # pass the handshake through; the CSMS's answer decides
    REFUSE = "refuse"  # HTTP 404: unknown identity
    UNAUTHORIZED = "unauthorized"  # HTTP 401: credentials missing or wrong


@dataclass(frozen=True, slots=True)
class Credential:
    """A salted password hash."""

    salt: bytes
    digest: bytes

    def to_text(self) -> str:
        return f"pbkdf2-sha256${PBKDF2_ITERATIONS}${self.salt.hex()}${self.digest.hex()}"

    @classmethod
    def from_text(cls, text: str) -> Credential:
        scheme, iterations, salt, digest = text.split("$")
        if scheme != "pbkdf2-sha256" or int(iterations) != PBKDF2_ITERATIONS:
            raise ValueError("unknown credential format")
        return cls(bytes.fromhex(salt), bytes.fromhex(digest))


def hash_password(password: bytes, salt: bytes) -> Credential:
    """The credential of ``password`` with ``salt`` (at least 16 random bytes)."""
    if len(salt) < _SALT_BYTES:
        raise ValueError("salt too short")
    return Credential(salt, hashlib.pbkdf2_hmac("sha256", password, salt, PBKDF2_ITERATIONS))


def password_forms(password: bytes, version: str) -> tuple[bytes, ...]:
    """The byte strings a charger's Basic password may stand for.

    OCPP 1.6 (security whitepaper): the AuthorizationKey is up to 20 bytes written as
    40 hex digits; chargers send either the hex text or the raw key bytes, so both are
    tried, the raw form as its hex text. OCPP 2.0.1: the UTF-8 text, as is.
    """
    if version != "ocpp1.6":
        return (password,)
    forms = [password]
    try:
        text = password.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if not text or any(c not in "0123456789abcdefABCDEF" for c in text):
        forms.append(password.hex().encode())  # raw key bytes → their hex text
    elif text != text.lower():
        forms.append(text.lower().encode())
    return tuple(forms)


def verify_password(password: bytes, credential: Credential, version: str) -> bool:
    """Whether ``password`` matches ``credential`` (constant-time comparison)."""
    ok = False
    for form in password_forms(password, version):
        candidate = hashlib.pbkdf2_hmac("sha256", form, credential.salt, PBKDF2_ITERATIONS)
        ok |= hmac.compare_digest(candidate, credential.digest)
    return ok


def parse_basic(header: str | None) -> tuple[str, bytes] | None:
    """The (username, password bytes) of a Basic Authorization header, or None."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def basic_header(username: str, password: bytes) -> str:
    """A Basic Authorization header."""
    return "Basic " + base64.b64encode(username.encode() + b":" + password).decode("ascii")


def admit(
    *,
    registered: bool,
    unknown_identities: str,
    profile: int,
    credentials: tuple[str, bytes] | None,
    identity: str,
    credential: Credential | None,
    password_ok: bool | None,
) -> Verdict:
    """Decide for one handshake.

    ``registered``: the identity is in the settings or was accepted by the CSMS before.
    ``credentials``: the Basic header's (user, password), if any. ``credential``: the
    hash the controller holds for the identity (configured or learned), if any.
    ``password_ok``: the outcome of verifying ``credentials`` against ``credential``
    (None when there was nothing to verify).
    """
    if not registered and unknown_identities != "pass_through":
        return Verdict.REFUSE
    if profile in (1, 2):
        if credentials is None or credentials[0] != identity:
            return Verdict.UNAUTHORIZED
        if credential is not None:
            return Verdict.ADMIT if password_ok else Verdict.UNAUTHORIZED
        # Nothing to check against here: the CSMS checks the credentials it is passed.
        return Verdict.ASK_CSMS
    if not registered:
        return Verdict.ASK_CSMS
    return Verdict.ADMIT
