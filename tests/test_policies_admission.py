"""Tests of policies.admission: verdicts, salted PBKDF2 credentials, password forms, Basic.

Every branch of the module (RELIABILITY.md R2, R33, R34, T7): the admission verdict for
each combination of registration, unknown-identity policy, profile and credentials; the
two OCPP 1.6 password forms (hex text and raw key bytes) against the one UTF-8 form of
OCPP 2.0.1; the constant-time comparison; the credential text round trip; Basic header
parsing on good and broken headers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import admission
from policies.admission import (
    PBKDF2_ITERATIONS,
    Credential,
    Verdict,
    admit,
    basic_header,
    hash_password,
    parse_basic,
    password_forms,
    verify_password,
)

SALT = bytes(range(16))
#: A 1.6 AuthorizationKey: 20 bytes, written as 40 hex digits.
KEY = bytes.fromhex("00112233445566778899aabbccddeeff01234567")
KEY_HEX = KEY.hex()


def cred(password: bytes, salt: bytes = SALT) -> Credential:
    return hash_password(password, salt)


# --------------------------------------------------------------------------- Credential


def test_credential_text_round_trip() -> None:
    """A credential written as text reads back as the same salt and digest."""
    c = cred(b"password-0123456")
    text = c.to_text()
    assert text == f"pbkdf2-sha256${PBKDF2_ITERATIONS}${SALT.hex()}${c.digest.hex()}"
    assert Credential.from_text(text) == c


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=16, max_size=32), st.binary(min_size=32, max_size=32))
def test_credential_text_round_trip_for_any_salt_and_digest(salt: bytes, digest: bytes) -> None:
    """Any salt and digest survive the text form."""
    c = Credential(salt, digest)
    assert Credential.from_text(c.to_text()) == c


def test_credential_text_holds_no_password() -> None:
    """The stored text is a hash: the password appears in it neither plain nor in hex."""
    password = b"clear-text-secret-1234"
    text = cred(password).to_text()
    assert password.decode() not in text
    assert password.hex() not in text


@pytest.mark.parametrize(
    "text",
    [
        f"pbkdf2-sha1${PBKDF2_ITERATIONS}$00$00",  # another scheme
        f"pbkdf2-sha256${PBKDF2_ITERATIONS + 1}$00$00",  # other iterations
        "pbkdf2-sha256$abc$00$00",  # iterations not a number
        f"pbkdf2-sha256${PBKDF2_ITERATIONS}$zz$00",  # salt not hex
        f"pbkdf2-sha256${PBKDF2_ITERATIONS}$00$0",  # digest odd hex
        f"pbkdf2-sha256${PBKDF2_ITERATIONS}$00",  # too few parts
        f"pbkdf2-sha256${PBKDF2_ITERATIONS}$00$00$00",  # too many parts
        "",
    ],
)
def test_credential_from_unknown_text_raises_value_error(text: str) -> None:
    """Anything but the one known format raises ValueError (the gate then falls back)."""
    with pytest.raises(ValueError):
        Credential.from_text(text)


# --------------------------------------------------------------------------- hashing


def test_hash_password_is_pbkdf2_sha256_with_the_salt() -> None:
    """The digest is PBKDF2-HMAC-SHA256 of the password with the salt and iteration count."""
    c = cred(b"some-password-16")
    assert c.salt == SALT
    assert c.digest == hashlib.pbkdf2_hmac("sha256", b"some-password-16", SALT, PBKDF2_ITERATIONS)


def test_hash_password_differs_per_salt() -> None:
    """The same password under two salts gives two digests (a unique salt per charger)."""
    assert cred(b"p" * 16, SALT).digest != cred(b"p" * 16, bytes(16)).digest


@pytest.mark.parametrize("length", [0, 8, 15])
def test_hash_password_refuses_a_short_salt(length: int) -> None:
    """A salt under 16 bytes is refused."""
    with pytest.raises(ValueError, match="salt too short"):
        hash_password(b"password", b"s" * length)


def test_hash_password_accepts_a_longer_salt() -> None:
    """A salt longer than 16 bytes is fine."""
    assert cred(b"password", b"s" * 32).salt == b"s" * 32


# --------------------------------------------------------------------------- password forms


@pytest.mark.parametrize("version", ["ocpp2.0.1", "ocpp2.1", "anything"])
def test_password_forms_beyond_16_are_the_bytes_as_sent(version: str) -> None:
    """OCPP 2.0.1 (and anything not 1.6): the UTF-8 bytes as sent, nothing else."""
    for password in (KEY, KEY_HEX.encode(), KEY_HEX.upper().encode(), "pässwört".encode()):
        assert password_forms(password, version) == (password,)


def test_password_forms_16_lowercase_hex_is_only_itself() -> None:
    """1.6: lowercase hex text stands for itself only."""
    assert password_forms(KEY_HEX.encode(), "ocpp1.6") == (KEY_HEX.encode(),)


def test_password_forms_16_uppercase_hex_also_as_lowercase() -> None:
    """1.6: hex text with capitals is also tried in lowercase."""
    upper = KEY_HEX.upper().encode()
    assert password_forms(upper, "ocpp1.6") == (upper, KEY_HEX.encode())


def test_password_forms_16_raw_key_bytes_also_as_their_hex_text() -> None:
    """1.6: raw key bytes (not ASCII) are also tried as their hex text."""
    assert password_forms(KEY, "ocpp1.6") == (KEY, KEY_HEX.encode())


def test_password_forms_16_ascii_non_hex_also_as_its_hex_text() -> None:
    """1.6: an ASCII password that is not hex is also tried as the hex of its bytes."""
    assert password_forms(b"not-hex-password", "ocpp1.6") == (
        b"not-hex-password",
        b"not-hex-password".hex().encode(),
    )


def test_password_forms_16_empty_password() -> None:
    """1.6: an empty password gives the empty hex text as its second form."""
    assert password_forms(b"", "ocpp1.6") == (b"", b"")


# --------------------------------------------------------------------------- verification


def test_16_both_password_forms_match_a_hex_key() -> None:
    """1.6: a key configured as hex text is matched by the hex text, capitals, or raw bytes."""
    c = cred(KEY_HEX.encode())
    assert verify_password(KEY_HEX.encode(), c, "ocpp1.6")
    assert verify_password(KEY_HEX.upper().encode(), c, "ocpp1.6")
    assert verify_password(KEY, c, "ocpp1.6")


def test_16_wrong_keys_do_not_match() -> None:
    """1.6: another key, a truncated key, or the empty password does not match."""
    c = cred(KEY_HEX.encode())
    other = bytes.fromhex("ff" * 20)
    for wrong in (other, other.hex().encode(), KEY_HEX[:-2].encode(), KEY[:-1], b""):
        assert not verify_password(wrong, c, "ocpp1.6")


def test_201_matches_only_the_exact_utf8_text() -> None:
    """2.0.1: the password is the UTF-8 text as is; no hex or case variants."""
    c = cred(KEY_HEX.encode())
    assert verify_password(KEY_HEX.encode(), c, "ocpp2.0.1")
    assert not verify_password(KEY_HEX.upper().encode(), c, "ocpp2.0.1")
    assert not verify_password(KEY, c, "ocpp2.0.1")


def test_201_utf8_password_matches_only_in_utf8() -> None:
    """2.0.1: a non-ASCII password matches in UTF-8, not in another encoding."""
    text = "Pässwört-ünïcödé-€-16+"
    c = cred(text.encode("utf-8"))
    assert verify_password(text.encode("utf-8"), c, "ocpp2.0.1")
    assert not verify_password(text.encode("latin-1", "replace"), c, "ocpp2.0.1")
    assert not verify_password(text.encode("utf-16"), c, "ocpp2.0.1")


def test_16_raw_bytes_configured_are_not_matched_by_their_hex_text() -> None:
    """1.6: the forms widen what the charger sends, not what is configured."""
    c = cred(KEY)  # a credential of raw bytes (as if configured so)
    assert verify_password(KEY, c, "ocpp1.6")
    assert not verify_password(KEY_HEX.encode(), c, "ocpp1.6")


def test_verification_compares_every_form_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each form is compared with hmac.compare_digest, all of them, even after a match."""
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(admission.hmac, "compare_digest", spy)
    c = cred(KEY_HEX.upper().encode())
    # The first form (as sent) matches; the lowercase form is still compared.
    assert verify_password(KEY_HEX.upper().encode(), c, "ocpp1.6")
    assert len(seen) == 2
    assert all(b == c.digest for _, b in seen)
    seen.clear()
    assert not verify_password(b"wrong", c, "ocpp2.0.1")
    assert len(seen) == 1


def test_admission_module_has_no_plain_equality_on_digests() -> None:
    """No digest is compared with == (a timing side channel)."""
    import inspect

    source = inspect.getsource(admission.verify_password)
    assert "compare_digest" in source
    assert "==" not in source


# --------------------------------------------------------------------------- Basic header


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        (f"Basic {b64(b'CP1:secret')}", ("CP1", b"secret")),
        (f"basic {b64(b'CP1:secret')}", ("CP1", b"secret")),  # scheme is case-insensitive
        (f"BASIC {b64(b'CP1:secret')}", ("CP1", b"secret")),
        (f"  Basic {b64(b'CP1:secret')}  ", ("CP1", b"secret")),  # outer whitespace
        (f"Basic   {b64(b'CP1:secret')}", ("CP1", b"secret")),  # several spaces
        (f"Basic {b64(b'CP1:a:b:c')}", ("CP1", b"a:b:c")),  # colons stay in the password
        (f"Basic {b64(b'CP1:')}", ("CP1", b"")),  # empty password
        (f"Basic {b64(b':secret')}", ("", b"secret")),  # empty user
        (f"Basic {b64(b'CP1:' + KEY)}", ("CP1", KEY)),  # raw key bytes
        (f"Basic {b64('Ünï:pässwört'.encode())}", ("Ünï", "pässwört".encode())),
    ],
)
def test_parse_basic_good_headers(header: str, parsed: tuple[str, bytes]) -> None:
    """A Basic header gives (user, password bytes), the password split at the first colon."""
    assert parse_basic(header) == parsed


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        "Basic",
        "Basic ",
        "Basic    ",
        f"Bearer {b64(b'CP1:secret')}",
        f"Digest {b64(b'CP1:secret')}",
        f"Basic{b64(b'CP1:secret')}",  # no space after the scheme
        "Basic !!!notbase64!!!",
        "Basic Q1AxOnNlY3JldA",  # missing padding
        "Basic Q1AxOnNlY3JldA==x",  # trailing garbage
        "Basic Q1Ax OnNlY3JldA==",  # a space inside
        "Basic Q1Ax\nOnNlY3JldA==",  # a newline inside
        f"Basic {b64(b'CP1secret')}",  # no colon
        f"Basic {b64(b'')}",  # nothing at all: "Basic " with an empty token
        f"Basic {b64(bytes([0xFF, 0xFE]) + b':secret')}",  # user not UTF-8
        "Basic Ä",  # not ASCII
    ],
)
def test_parse_basic_bad_headers_are_none(header: str | None) -> None:
    """Missing, other schemes, broken base64, no colon, or a user not in UTF-8: None."""
    assert parse_basic(header) is None


@settings(max_examples=100, deadline=None)
@given(
    st.text(st.characters(blacklist_characters=":", blacklist_categories=("Cs",)), max_size=48),
    st.binary(max_size=64),
)
def test_basic_header_round_trips(user: str, password: bytes) -> None:
    """parse_basic(basic_header(user, password)) gives back (user, password)."""
    assert parse_basic(basic_header(user, password)) == (user, password)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_parse_basic_never_raises(header: str) -> None:
    """Any header text gives a pair or None, never an exception."""
    result = parse_basic(header)
    assert result is None or (isinstance(result[0], str) and isinstance(result[1], bytes))


def test_basic_header_format() -> None:
    """The header is 'Basic ' and the base64 of user:password."""
    assert basic_header("CP1", b"secret") == "Basic " + b64(b"CP1:secret")


# --------------------------------------------------------------------------- admit

CREDS = ("CP1", b"password")
STORED = Credential(SALT, b"d" * 32)


def verdict(
    *,
    registered: bool = True,
    unknown: str = "refuse",
    profile: int = 1,
    credentials: tuple[str, bytes] | None = CREDS,
    identity: str = "CP1",
    credential: Credential | None = STORED,
    password_ok: bool | None = True,
) -> Verdict:
    return admit(
        registered=registered,
        unknown_identities=unknown,
        profile=profile,
        credentials=credentials,
        identity=identity,
        credential=credential,
        password_ok=password_ok,
    )


@pytest.mark.parametrize("profile", [0, 1, 2, 3])
def test_unregistered_identity_is_refused_under_refuse(profile: int) -> None:
    """Unknown identity, policy refuse: 404 whatever the profile and credentials."""
    assert verdict(registered=False, unknown="refuse", profile=profile) is Verdict.REFUSE
    assert verdict(registered=False, profile=profile, credentials=None) is Verdict.REFUSE


def test_any_policy_but_pass_through_refuses() -> None:
    """Only the exact value pass_through lets an unknown identity through."""
    assert verdict(registered=False, unknown="Pass_Through") is Verdict.REFUSE
    assert verdict(registered=False, unknown="") is Verdict.REFUSE


@pytest.mark.parametrize("profile", [0, 3])
def test_profiles_without_basic_admit_registered_identities(profile: int) -> None:
    """Profiles 0 and 3 (no Basic): a registered identity is admitted, credentials ignored."""
    for credentials, password_ok in ((None, None), (CREDS, False), (("other", b"x"), None)):
        assert (
            verdict(profile=profile, credentials=credentials, password_ok=password_ok)
            is Verdict.ADMIT
        )


@pytest.mark.parametrize("profile", [0, 3])
def test_profiles_without_basic_ask_the_csms_for_unregistered(profile: int) -> None:
    """Profiles 0 and 3, pass_through: an unknown identity is left to the CSMS."""
    assert (
        verdict(registered=False, unknown="pass_through", profile=profile, credentials=None)
        is Verdict.ASK_CSMS
    )


@pytest.mark.parametrize("profile", [1, 2])
@pytest.mark.parametrize("registered", [True, False])
def test_basic_profiles_without_credentials_are_unauthorized(
    profile: int, registered: bool
) -> None:
    """Profiles 1 and 2: no Basic header gives 401 (registered or passed through)."""
    assert (
        verdict(
            registered=registered,
            unknown="pass_through",
            profile=profile,
            credentials=None,
            password_ok=None,
        )
        is Verdict.UNAUTHORIZED
    )


@pytest.mark.parametrize("profile", [1, 2])
def test_basic_profiles_username_must_be_the_identity(profile: int) -> None:
    """Profiles 1 and 2: a username other than the identity gives 401, even without a hash."""
    for credential in (STORED, None):
        assert (
            verdict(profile=profile, credentials=("CP2", b"password"), credential=credential)
            is Verdict.UNAUTHORIZED
        )
    assert verdict(profile=profile, credentials=("cp1", b"password")) is Verdict.UNAUTHORIZED


@pytest.mark.parametrize("profile", [1, 2])
@pytest.mark.parametrize(
    ("password_ok", "expected"),
    [(True, Verdict.ADMIT), (False, Verdict.UNAUTHORIZED), (None, Verdict.UNAUTHORIZED)],
)
def test_basic_profiles_with_a_hash_follow_the_password_check(
    profile: int, password_ok: bool | None, expected: Verdict
) -> None:
    """Profiles 1 and 2 with a hash: admitted only when the password was verified."""
    for registered in (True, False):
        assert (
            verdict(
                registered=registered,
                unknown="pass_through",
                profile=profile,
                password_ok=password_ok,
            )
            is expected
        )


@pytest.mark.parametrize("profile", [1, 2])
@pytest.mark.parametrize("registered", [True, False])
def test_basic_profiles_without_a_hash_ask_the_csms(profile: int, registered: bool) -> None:
    """Profiles 1 and 2, nothing to check against: the CSMS checks what it is passed."""
    assert (
        verdict(
            registered=registered,
            unknown="pass_through",
            profile=profile,
            credential=None,
            password_ok=None,
        )
        is Verdict.ASK_CSMS
    )


def test_verdict_table_is_total() -> None:
    """Every input combination gives one of the four verdicts, and 404 only when unknown."""
    for registered, unknown, profile, creds, credential, ok in itertools.product(
        (True, False),
        ("refuse", "pass_through"),
        (0, 1, 2, 3),
        (None, CREDS, ("X", b"")),
        (None, STORED),
        (None, True, False),
    ):
        v = verdict(
            registered=registered,
            unknown=unknown,
            profile=profile,
            credentials=creds,
            credential=credential,
            password_ok=ok,
        )
        assert isinstance(v, Verdict)
        if v is Verdict.REFUSE:
            assert not registered and unknown == "refuse"
        if v is Verdict.ADMIT and profile in (1, 2):
            assert creds == CREDS and credential is not None and ok is True
