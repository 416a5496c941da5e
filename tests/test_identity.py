"""Tests of the handshake helpers: identity, subprotocols, close codes, uplink URL, back-off."""

from __future__ import annotations

import itertools
import random
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.datastructures import Headers

from proxy.charger import MAX_IDENTITY_LENGTH, identity_from_path, offered_subprotocols
from proxy.session import relay_close_code
from proxy.uplink import backoff, first_common, uplink_url
from proxy.versions import SUPPORTED_SUBPROTOCOLS

# -- identity_from_path (R1, B15, B20) ------------------------------------------------


@pytest.mark.parametrize(
    ("path", "identity"),
    [
        ("/ocpp/CP1", "CP1"),
        ("/CP1", "CP1"),
        ("/a/b/c/CP1", "CP1"),
        ("/ocpp/CP%2D1", "CP-1"),
        ("/ocpp/CP%2d1", "CP-1"),
        ("/ocpp/CP-1?token=x&y=/z", "CP-1"),
        ("/ocpp/CP%2D1?x=1", "CP-1"),
        ("/ocpp/CP1#frag", "CP1"),
        ("/ocpp/CP%2541", "CP%41"),  # decoded once only
        ("/ocpp/" + "X" * MAX_IDENTITY_LENGTH, "X" * 48),
        ("/ocpp/" + "%41" * 48, "A" * 48),  # the limit counts decoded characters
        ("/ocpp/a.b_c~d!e$f", "a.b_c~d!e$f"),
    ],
)
def test_identity_is_the_last_segment_percent_decoded(path: str, identity: str) -> None:
    """R1: the identity is the last path segment, percent-decoded, without query or slash."""
    assert identity_from_path(path) == identity


@pytest.mark.parametrize(
    "path",
    [
        "/ocpp/" + "X" * (MAX_IDENTITY_LENGTH + 1),  # 49 characters
        "/ocpp/CP:1",
        "/ocpp/CP%3A1",
        "/",
        "",
        "//CP1",  # a network path: CP1 would be a host name
        "/ocpp/..",
        "/ocpp/.",
        "/ocpp/%2E%2E",
        "/ocpp/..%2F",
        "/ocpp/CP%2F1",
        "/ocpp/CP%201",
        "/ocpp/CP 1",
        "/ocpp/CP%001",
        "/ocpp/CP%7F",
        "/ocpp/CP%0A1",
        "/ocpp/CP%C3%A91",  # é, non-ASCII once decoded
        "/ocpp/CPé1",
    ],
)
def test_unacceptable_identities_are_refused(path: str) -> None:
    """B20: too long, ':', empty, '.', '..', '/', space, control or non-ASCII: refused."""
    assert identity_from_path(path) is None


def test_trailing_slash_leaves_no_identity() -> None:
    """A path ending in a slash names no charger (``/ocpp/`` is not charger "ocpp")."""
    assert identity_from_path("/ocpp/CP1/") is None
    assert identity_from_path("/ocpp/") is None
    assert identity_from_path("/ocpp/CP1") == "CP1"


@pytest.mark.parametrize("path", ["/ocpp/CP\t1", "/ocpp/CP\n1", "/ocpp/C\rP1", "/oc\tpp/CP1\t"])
def test_raw_control_characters_in_the_path_are_refused(path: str) -> None:
    """B20: a request path with raw tab, CR or LF is refused, not silently cleaned to CP1."""
    assert identity_from_path(path) is None


@pytest.mark.parametrize("path", ["/ocpp/%FF", "/ocpp/CP%C3", "/ocpp/%ED%A0%80"])
def test_percent_encoded_invalid_utf8_is_refused(path: str) -> None:
    """B20: percent-escapes that are not UTF-8 are refused (None), not an exception."""
    assert identity_from_path(path) is None


identities = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":/"),
    min_size=1,
    max_size=MAX_IDENTITY_LENGTH,
).filter(lambda s: s not in (".", ".."))


@settings(max_examples=300, deadline=None)
@given(identities)
def test_uplink_path_gives_back_the_same_identity(identity: str) -> None:
    """R1: the identity the CSMS reads from the uplink URL is the one the charger presented."""
    url = uplink_url("wss://csms.example/ocpp", identity)
    assert identity_from_path(urlsplit(url).path) == identity


# -- offered_subprotocols -------------------------------------------------------------


def test_offered_subprotocols_from_one_comma_list() -> None:
    """A comma list in one header gives every token, in order, trimmed."""
    headers = Headers([("Sec-WebSocket-Protocol", "ocpp1.6, ocpp2.0.1 ,ocpp2.1")])
    assert offered_subprotocols(headers) == ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"]


def test_offered_subprotocols_from_repeated_headers() -> None:
    """Repeated headers are concatenated in order; empty items are skipped."""
    headers = Headers()
    headers["Sec-WebSocket-Protocol"] = "ocpp2.0.1,"
    headers["sec-websocket-protocol"] = " , ocpp1.6"
    headers["Sec-WebSocket-Protocol"] = "ocpp1.5"
    assert offered_subprotocols(headers) == ["ocpp2.0.1", "ocpp1.6", "ocpp1.5"]


def test_no_subprotocol_header_offers_nothing() -> None:
    """B19: no header means nothing offered."""
    assert offered_subprotocols(Headers([("Host", "x")])) == []


# -- first_common ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["ocpp1.6", "ocpp2.0.1"], "ocpp2.0.1"),
        (["ocpp2.1", "ocpp1.6"], "ocpp1.6"),
        (["ocpp2.1"], "ocpp2.1"),
        (["ocpp1.5", "ocpp2.0"], None),
        ([], None),
    ],
)
def test_first_common_follows_our_preference(offered: list[str], chosen: str | None) -> None:
    """first_common() picks our first preference that the peer offered, else None."""
    assert first_common(offered, SUPPORTED_SUBPROTOCOLS) == chosen


# -- uplink_url -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity", "url"),
    [
        ("CP-1", "wss://csms.example/ocpp/CP-1"),
        ("CP 1", "wss://csms.example/ocpp/CP%201"),
        ("CP/1", "wss://csms.example/ocpp/CP%2F1"),
        ("CP%41", "wss://csms.example/ocpp/CP%2541"),
        ("CP?1#2", "wss://csms.example/ocpp/CP%3F1%232"),
        ("é", "wss://csms.example/ocpp/%C3%A9"),
    ],
)
def test_uplink_url_percent_encodes_the_identity(identity: str, url: str) -> None:
    """The identity is one percent-encoded path segment under the CSMS base URL."""
    assert uplink_url("wss://csms.example/ocpp", identity) == url


# -- relay_close_code -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("received", "relayed"),
    [
        (None, 1000),
        (1000, 1000),
        (1001, 1001),
        (1002, 1002),
        (1003, 1003),
        (1005, 1000),  # no status received: not sendable
        (1006, 1001),  # abnormal closure: the peer went away
        (1007, 1007),
        (1008, 1008),
        (1009, 1009),
        (1010, 1010),
        (1011, 1011),
        (1012, 1012),
        (1013, 1013),
        (1014, 1014),
        (1004, 1000),
        (1015, 1000),  # TLS failure: never sent on the wire
        (1016, 1000),
        (2999, 1000),
        (3000, 3000),
        (4000, 4000),
        (4999, 4999),
        (5000, 1000),
        (0, 1000),
        (999, 1000),
    ],
)
def test_relay_close_code(received: int | None, relayed: int) -> None:
    """RFC 6455 §7.4: sendable codes are relayed; reserved or invalid ones become 1000/1001."""
    assert relay_close_code(received) == relayed


# -- backoff --------------------------------------------------------------------------


def test_backoff_without_jitter_doubles_up_to_the_cap() -> None:
    """The wait doubles from the minimum and stays at the maximum once reached."""
    waits = list(itertools.islice(backoff(1.0, 60.0, 2.0, 0.0, random.Random(0)), 9))
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_backoff_jitter_stays_within_bounds() -> None:
    """Each wait is the exponential step plus a jitter in [0, jitter]."""
    waits = list(itertools.islice(backoff(0.5, 10.0, 3.0, 2.0, random.Random(0)), 8))
    bases = [0.5, 1.5, 4.5, 10.0, 10.0, 10.0, 10.0, 10.0]
    for wait, base in zip(waits, bases, strict=True):
        assert base <= wait <= base + 2.0
    assert len(set(waits)) == len(waits)  # the jitter is not constant


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    """The same seed gives the same schedule."""
    first = list(itertools.islice(backoff(rng=random.Random(0)), 20))
    second = list(itertools.islice(backoff(rng=random.Random(0)), 20))
    assert first == second
    assert all(1.0 <= w <= 61.0 for w in first)
    assert first[-1] >= 60.0


def test_backoff_never_overflows() -> None:
    """After thousands of attempts the wait is still the capped value, not an error."""
    waits = backoff(1.0, 60.0, 2.0, 0.0, random.Random(0))
    assert list(itertools.islice(waits, 5000))[-1] == 60.0
