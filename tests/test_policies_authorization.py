"""Tests of policies.authorization: offline authorization decisions."""

from __future__ import annotations

import ast
import itertools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import policies.authorization
from policies.authorization import (
    AuthDecision,
    AuthEntry,
    AuthSource,
    AuthStatus,
    authorize,
    cache_entry_from_answer,
    is_valid_id_tag,
    should_cache,
    token_key,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
EXPIRIES: dict[str, datetime | None] = {
    "none": None,
    "past": NOW - timedelta(seconds=1),
    "now": NOW,
    "future": NOW + timedelta(days=1),
}
LIST_SOURCES = (AuthSource.charger_list, AuthSource.site_list, AuthSource.cache)
# (tag stored in the list, tag presented by the charger)
CASE_PAIRS = (("abc123", "ABC123"), ("ABC123", "abc123"), ("AbC123", "aBc123"))
TOKEN_TYPES = (None, "ISO14443")
PARENT = "FLEET-1"

printable_tags = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20
)


def expected_status(status: AuthStatus, expiry: datetime | None) -> AuthStatus:
    """Reference rule: an Accepted entry at or past its expiry is Expired."""
    if status is AuthStatus.Accepted and expiry is not None and expiry <= NOW:
        return AuthStatus.Expired
    return status


def decide(
    key: str,
    lists: Mapping[AuthSource, Mapping[str, AuthEntry]],
    *,
    allow_unknown: bool = True,
    concurrent_tx: bool = False,
    active_elsewhere: bool = False,
    for_start: bool = False,
    valid: bool = True,
) -> AuthDecision:
    """Call authorize with the lists given per source, empty where not given."""
    return authorize(
        key,
        now=NOW,
        charger_list=lists.get(AuthSource.charger_list, {}),
        site_list=lists.get(AuthSource.site_list, {}),
        cache=lists.get(AuthSource.cache, {}),
        allow_unknown=allow_unknown,
        concurrent_tx=concurrent_tx,
        active_elsewhere=active_elsewhere,
        for_start=for_start,
        valid=valid,
    )


# --- the module stays pure -------------------------------------------------------------


def test_module_imports_no_io_libraries() -> None:
    """The authorization policy imports nothing that does I/O, logging or asyncio."""
    source = Path(policies.authorization.__file__).read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    forbidden = {"asyncio", "websockets", "aiosqlite", "sqlite3", "logging", "structlog", "os"}
    assert not imported & forbidden


# --- enums -----------------------------------------------------------------------------


def test_status_values_are_ocpp_spellings() -> None:
    """AuthStatus covers the 1.6 and 2.0.1 statuses, each value spelled as OCPP does."""
    v16 = {"Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"}
    v201 = v16 | {
        "NoCredit",
        "NotAllowedTypeEVSE",
        "NotAtThisLocation",
        "NotAtThisTime",
        "Unknown",
    }
    assert {status.value for status in AuthStatus} == v201
    assert all(status.name == status.value for status in AuthStatus)


def test_source_values() -> None:
    """AuthSource has exactly the five documented sources, named as their values."""
    assert [source.value for source in AuthSource] == [
        "charger_list",
        "site_list",
        "cache",
        "unknown_policy",
        "malformed",
    ]
    assert all(source.name == source.value for source in AuthSource)


# --- keys and tag validity -------------------------------------------------------------


@pytest.mark.parametrize(
    ("id_token", "token_type", "key"),
    [
        ("04a2b3c4", None, "04A2B3C4"),
        ("04A2B3C4", None, "04A2B3C4"),
        ("Card 7", None, "CARD 7"),
        ("04a2b3c4", "ISO14443", "ISO14443:04A2B3C4"),
        ("me-1", "eMAID", "eMAID:ME-1"),
        ("", None, ""),
    ],
)
def test_token_key(id_token: str, token_type: str | None, key: str) -> None:
    """token_key upper-cases the token and prefixes the 2.0.1 type as given."""
    assert token_key(id_token, token_type) == key


def test_token_key_versions_do_not_collide_on_plain_tags() -> None:
    """A 1.6 key and a 2.0.1 key of the same token differ."""
    assert token_key("abc", None) != token_key("abc", "Local")


@pytest.mark.parametrize(
    ("tag", "max_len", "valid"),
    [
        ("A", 20, True),
        ("A" * 20, 20, True),
        ("A" * 21, 20, False),
        ("A" * 36, 36, True),
        ("A" * 37, 36, False),
        ("", 20, False),
        (" ", 20, True),
        ("~!@#$%^&*()_+{}|:<>?", 20, True),
        ("tab\there", 20, False),
        ("bell\x07", 20, False),
        ("del\x7f", 20, False),
        ("caf\u00e9", 20, False),
        ("A" * 18 + "\u0010\u000e", 20, False),
    ],
)
def test_is_valid_id_tag(tag: str, max_len: int, valid: bool) -> None:
    """A tag is valid when it is 1..max_len printable ASCII characters."""
    assert is_valid_id_tag(tag, max_len) is valid


def test_is_valid_id_tag_default_is_cistring20() -> None:
    """Without max_len the limit is 20 characters (CiString20)."""
    assert is_valid_id_tag("A" * 20)
    assert not is_valid_id_tag("A" * 21)


@settings(database=None)
@given(st.text(max_size=40))
def test_is_valid_id_tag_matches_definition(tag: str) -> None:
    """is_valid_id_tag agrees with "non-empty, at most 20, every char in 0x20..0x7E"."""
    expected = 0 < len(tag) <= 20 and all(" " <= char <= "~" for char in tag)
    assert is_valid_id_tag(tag) is expected


# --- entries ---------------------------------------------------------------------------


def test_entry_rejects_naive_expiry() -> None:
    """An AuthEntry with a naive expiry cannot be built."""
    with pytest.raises(ValueError, match="timezone-aware"):
        AuthEntry(AuthStatus.Accepted, datetime(2030, 1, 1))


def test_entry_defaults() -> None:
    """An AuthEntry needs only a status; expiry and parent default to None."""
    entry = AuthEntry(AuthStatus.Blocked)
    assert (entry.expiry, entry.parent_id_tag) == (None, None)


# --- authorize: every source x status x expiry x case ----------------------------------


@pytest.mark.parametrize("token_type", TOKEN_TYPES)
@pytest.mark.parametrize("case", CASE_PAIRS, ids="/".join)
@pytest.mark.parametrize("expiry_name", list(EXPIRIES))
@pytest.mark.parametrize("status", list(AuthStatus))
@pytest.mark.parametrize("source", LIST_SOURCES)
def test_entry_in_one_source_decides(
    source: AuthSource,
    status: AuthStatus,
    expiry_name: str,
    case: tuple[str, str],
    token_type: str | None,
) -> None:
    """An entry found in any one source decides, case-insensitively, keeping its details."""
    stored, presented = case
    expiry = EXPIRIES[expiry_name]
    entry = AuthEntry(status, expiry, PARENT)
    lists = {source: {token_key(stored, token_type): entry}}
    for allow_unknown in (True, False):
        decision = decide(token_key(presented, token_type), lists, allow_unknown=allow_unknown)
        assert decision == AuthDecision(expected_status(status, expiry), source, expiry, PARENT)


@pytest.mark.parametrize("expiry_name", ["past", "now"])
@pytest.mark.parametrize("source", LIST_SOURCES)
def test_accepted_at_or_past_expiry_is_expired(source: AuthSource, expiry_name: str) -> None:
    """An Accepted entry whose expiry is at or before now is answered Expired."""
    lists = {source: {"TAG": AuthEntry(AuthStatus.Accepted, EXPIRIES[expiry_name])}}
    assert decide("TAG", lists).status is AuthStatus.Expired


def test_expiry_just_after_now_is_accepted() -> None:
    """An expiry one microsecond after now is still Accepted."""
    entry = AuthEntry(AuthStatus.Accepted, NOW + timedelta(microseconds=1))
    assert decide("TAG", {AuthSource.cache: {"TAG": entry}}).status is AuthStatus.Accepted


def test_expiry_in_another_offset_compares_as_an_instant() -> None:
    """An expiry written with a +02:00 offset is compared by instant with now."""
    same_instant = NOW.astimezone(timezone(timedelta(hours=2)))
    entry = AuthEntry(AuthStatus.Accepted, same_instant)
    assert decide("TAG", {AuthSource.site_list: {"TAG": entry}}).status is AuthStatus.Expired


def test_now_in_another_offset_is_accepted_as_input() -> None:
    """authorize takes an aware now in any offset, not only UTC."""
    entry = AuthEntry(AuthStatus.Accepted, NOW + timedelta(hours=1))
    decision = authorize(
        "TAG",
        now=NOW.astimezone(timezone(timedelta(hours=-5))),
        charger_list={},
        site_list={},
        cache={"TAG": entry},
        allow_unknown=False,
    )
    assert decision.status is AuthStatus.Accepted


def test_naive_now_is_refused() -> None:
    """A naive now is a caller error and raises ValueError."""
    with pytest.raises(ValueError, match="timezone-aware"):
        authorize(
            "TAG",
            now=datetime(2025, 6, 1, 12, 0),
            charger_list={},
            site_list={},
            cache={},
            allow_unknown=True,
        )


# --- authorize: order of sources -------------------------------------------------------


@pytest.mark.parametrize("lower_status", list(AuthStatus))
@pytest.mark.parametrize("higher_status", list(AuthStatus))
@pytest.mark.parametrize(
    ("higher", "lower"), list(itertools.combinations(LIST_SOURCES, 2)), ids=str
)
def test_first_source_holding_the_key_decides(
    higher: AuthSource,
    lower: AuthSource,
    higher_status: AuthStatus,
    lower_status: AuthStatus,
) -> None:
    """The earlier source in charger list -> site list -> cache decides, whatever it says."""
    lists = {
        higher: {"TAG": AuthEntry(higher_status, None, "HIGH")},
        lower: {"TAG": AuthEntry(lower_status, None, "LOW")},
    }
    assert decide("TAG", lists) == AuthDecision(higher_status, higher, None, "HIGH")


def test_charger_list_blocked_beats_site_list_accepted() -> None:
    """A Blocked charger-list entry stays Blocked although the site list accepts the tag."""
    lists = {
        AuthSource.charger_list: {"TAG": AuthEntry(AuthStatus.Blocked)},
        AuthSource.site_list: {"TAG": AuthEntry(AuthStatus.Accepted)},
        AuthSource.cache: {"TAG": AuthEntry(AuthStatus.Accepted)},
    }
    assert decide("TAG", lists) == AuthDecision(AuthStatus.Blocked, AuthSource.charger_list)


def test_expired_higher_entry_is_not_rescued_by_lower_source() -> None:
    """An expired charger-list entry is Expired even if the site list has a fresh entry."""
    lists = {
        AuthSource.charger_list: {"TAG": AuthEntry(AuthStatus.Accepted, EXPIRIES["past"])},
        AuthSource.site_list: {"TAG": AuthEntry(AuthStatus.Accepted, EXPIRIES["future"])},
    }
    decision = decide("TAG", lists)
    assert (decision.status, decision.source) == (AuthStatus.Expired, AuthSource.charger_list)


@pytest.mark.parametrize("allow_unknown", [True, False])
def test_expired_cache_entry_does_not_fall_through(allow_unknown: bool) -> None:
    """An expired cache entry is Expired, never handed to the unknown-id policy."""
    lists = {AuthSource.cache: {"TAG": AuthEntry(AuthStatus.Accepted, EXPIRIES["past"])}}
    decision = decide("TAG", lists, allow_unknown=allow_unknown)
    assert (decision.status, decision.source) == (AuthStatus.Expired, AuthSource.cache)


def test_other_key_in_lists_does_not_match() -> None:
    """Entries for other keys are ignored and the unknown-id policy answers."""
    lists = {source: {"OTHER": AuthEntry(AuthStatus.Blocked)} for source in LIST_SOURCES}
    assert decide("TAG", lists, allow_unknown=False) == AuthDecision(
        AuthStatus.Invalid, AuthSource.unknown_policy
    )


def test_2_0_1_key_does_not_match_other_token_type() -> None:
    """A 2.0.1 token listed under one type is unknown under another type."""
    lists = {AuthSource.site_list: {token_key("abc", "ISO14443"): AuthEntry(AuthStatus.Blocked)}}
    decision = decide(token_key("abc", "ISO15693"), lists, allow_unknown=True)
    assert decision.source is AuthSource.unknown_policy


# --- authorize: unknown ids and malformed ids ------------------------------------------


@pytest.mark.parametrize(
    ("allow_unknown", "status"), [(True, AuthStatus.Accepted), (False, AuthStatus.Invalid)]
)
def test_unknown_id_policy(allow_unknown: bool, status: AuthStatus) -> None:
    """An id in no source is Accepted if unknown ids are allowed, else Invalid."""
    decision = decide("TAG", {}, allow_unknown=allow_unknown)
    assert decision == AuthDecision(status, AuthSource.unknown_policy, None, None)


@pytest.mark.parametrize("allow_unknown", [True, False])
@pytest.mark.parametrize("source", LIST_SOURCES)
def test_malformed_id_is_invalid(source: AuthSource, allow_unknown: bool) -> None:
    """valid=False answers Invalid from source malformed, even if a list accepts the key."""
    lists = {source: {"TAG": AuthEntry(AuthStatus.Accepted, None, PARENT)}}
    decision = decide(
        "TAG",
        lists,
        allow_unknown=allow_unknown,
        concurrent_tx=True,
        active_elsewhere=True,
        for_start=True,
        valid=False,
    )
    assert decision == AuthDecision(AuthStatus.Invalid, AuthSource.malformed, None, None)


def test_overlong_tag_end_to_end() -> None:
    """A 21-character tag checked with is_valid_id_tag is answered Invalid, no exception."""
    tag = "A" * 21
    key = token_key(tag, None)
    decision = decide(key, {}, allow_unknown=True, valid=is_valid_id_tag(tag))
    assert decision.status is AuthStatus.Invalid
    assert decision.source is AuthSource.malformed


# --- authorize: site-wide ConcurrentTx -------------------------------------------------

CONCURRENT_SCENARIOS: dict[str, tuple[dict[AuthSource, dict[str, AuthEntry]], bool]] = {
    "charger_list_accepted": (
        {AuthSource.charger_list: {"TAG": AuthEntry(AuthStatus.Accepted, EXPIRIES["future"])}},
        False,
    ),
    "site_list_accepted": ({AuthSource.site_list: {"TAG": AuthEntry(AuthStatus.Accepted)}}, False),
    "cache_accepted": ({AuthSource.cache: {"TAG": AuthEntry(AuthStatus.Accepted)}}, False),
    "unknown_allowed": ({}, True),
    "unknown_denied": ({}, False),
    "blocked": ({AuthSource.site_list: {"TAG": AuthEntry(AuthStatus.Blocked)}}, True),
    "expired": (
        {AuthSource.cache: {"TAG": AuthEntry(AuthStatus.Accepted, EXPIRIES["past"])}},
        True,
    ),
}


@pytest.mark.parametrize("active_elsewhere", [True, False])
@pytest.mark.parametrize("for_start", [True, False])
@pytest.mark.parametrize("concurrent_tx", [True, False])
@pytest.mark.parametrize("scenario", list(CONCURRENT_SCENARIOS))
def test_concurrent_tx(
    scenario: str, concurrent_tx: bool, for_start: bool, active_elsewhere: bool
) -> None:
    """Only an Accepted start of an id charging elsewhere, with the setting on, is ConcurrentTx."""
    lists, allow_unknown = CONCURRENT_SCENARIOS[scenario]
    base = decide("TAG", lists, allow_unknown=allow_unknown)
    decision = decide(
        "TAG",
        lists,
        allow_unknown=allow_unknown,
        concurrent_tx=concurrent_tx,
        for_start=for_start,
        active_elsewhere=active_elsewhere,
    )
    if base.status is AuthStatus.Accepted and concurrent_tx and for_start and active_elsewhere:
        assert decision.status is AuthStatus.ConcurrentTx
    else:
        assert decision.status is base.status
    assert (decision.source, decision.expiry, decision.parent_id_tag) == (
        base.source,
        base.expiry,
        base.parent_id_tag,
    )


def test_concurrent_tx_keeps_parent_and_expiry() -> None:
    """A ConcurrentTx answer still carries the entry's expiry and parent tag."""
    expiry = EXPIRIES["future"]
    lists = {AuthSource.site_list: {"TAG": AuthEntry(AuthStatus.Accepted, expiry, PARENT)}}
    decision = decide("TAG", lists, concurrent_tx=True, for_start=True, active_elsewhere=True)
    assert decision == AuthDecision(AuthStatus.ConcurrentTx, AuthSource.site_list, expiry, PARENT)


# --- authorize: properties -------------------------------------------------------------

entries = st.builds(
    AuthEntry,
    status=st.sampled_from(AuthStatus),
    expiry=st.none()
    | st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    parent_id_tag=st.none() | printable_tags,
)


@st.composite
def case_variants(draw: st.DrawFn, tag: str) -> str:
    """Draw the tag with the case of each letter flipped or not."""
    flips = draw(st.lists(st.booleans(), min_size=len(tag), max_size=len(tag)))
    return "".join(c.swapcase() if flip else c for c, flip in zip(tag, flips, strict=True))


@settings(database=None)
@given(
    tag=printable_tags,
    data=st.data(),
    entry=entries,
    source=st.sampled_from(LIST_SOURCES),
    token_type=st.sampled_from(TOKEN_TYPES),
)
def test_lookups_are_case_insensitive(
    tag: str,
    data: st.DataObject,
    entry: AuthEntry,
    source: AuthSource,
    token_type: str | None,
) -> None:
    """Any case variant of a listed tag gets the same decision as the tag itself."""
    variant = data.draw(case_variants(tag))
    lists = {source: {token_key(tag, token_type): entry}}
    assert decide(token_key(variant, token_type), lists) == decide(
        token_key(tag, token_type), lists
    )
    assert decide(token_key(variant, token_type), lists).source is source


@settings(database=None)
@given(
    key=st.text(),
    lists=st.dictionaries(
        st.sampled_from(LIST_SOURCES), st.dictionaries(st.text(max_size=3), entries, max_size=4)
    ),
    flags=st.tuples(*(st.booleans() for _ in range(5))),
)
def test_authorize_always_answers(
    key: str,
    lists: dict[AuthSource, dict[str, AuthEntry]],
    flags: tuple[bool, bool, bool, bool, bool],
) -> None:
    """authorize returns a decision for any key and inputs, never raising."""
    allow_unknown, concurrent_tx, active_elsewhere, for_start, valid = flags
    decision = decide(
        key,
        lists,
        allow_unknown=allow_unknown,
        concurrent_tx=concurrent_tx,
        active_elsewhere=active_elsewhere,
        for_start=for_start,
        valid=valid,
    )
    assert isinstance(decision.status, AuthStatus)
    assert (decision.source is AuthSource.malformed) is not valid
    if decision.status is AuthStatus.Accepted:
        assert decision.expiry is None or decision.expiry > NOW


# --- learning the cache ----------------------------------------------------------------


def test_should_cache_unlisted_key() -> None:
    """A key in no local list may be cached."""
    assert should_cache("TAG", [{"OTHER": AuthEntry(AuthStatus.Accepted)}, {}])


@pytest.mark.parametrize("position", [0, 1])
def test_should_not_cache_listed_key(position: int) -> None:
    """A key in any local list is not cached, whatever its status there."""
    lists: list[dict[str, AuthEntry]] = [{}, {}]
    lists[position]["TAG"] = AuthEntry(AuthStatus.Blocked)
    assert not should_cache("TAG", lists)


def test_should_cache_without_lists() -> None:
    """With no local lists at all every key may be cached; any iterable is accepted."""
    assert should_cache("TAG", [])
    assert should_cache("TAG", (entries for entries in [{"X": AuthEntry(AuthStatus.Accepted)}]))


@pytest.mark.parametrize(
    "status", [status for status in AuthStatus if status is not AuthStatus.ConcurrentTx]
)
def test_cache_entry_from_every_status(status: AuthStatus) -> None:
    """Every 1.6 and 2.0.1 status string except ConcurrentTx becomes an entry."""
    expiry = EXPIRIES["future"]
    assert cache_entry_from_answer(status.value, expiry, PARENT) == AuthEntry(
        status, expiry, PARENT
    )


def test_cache_entry_from_concurrent_tx_is_none() -> None:
    """A ConcurrentTx answer leaves the cache unchanged (it describes a moment, not the id)."""
    assert cache_entry_from_answer("ConcurrentTx", None, None) is None


@pytest.mark.parametrize("status", ["", "accepted", "ACCEPTED", "Bogus", "Accepted "])
def test_cache_entry_from_unknown_status_is_none(status: str) -> None:
    """A status string that is not an exact OCPP spelling gives None."""
    assert cache_entry_from_answer(status, None, None) is None


def test_cache_entry_without_expiry_or_parent() -> None:
    """An answer without expiryDate or parentIdTag gives an entry without them."""
    assert cache_entry_from_answer("Blocked", None, None) == AuthEntry(AuthStatus.Blocked)


def test_cache_entry_naive_expiry_is_utc() -> None:
    """A naive expiryDate is taken as UTC."""
    entry = cache_entry_from_answer("Accepted", datetime(2030, 1, 1, 8, 0), None)
    assert entry is not None
    assert entry.expiry == datetime(2030, 1, 1, 8, 0, tzinfo=UTC)


def test_cache_entry_aware_expiry_kept() -> None:
    """An aware expiryDate in another offset is kept as given."""
    expiry = datetime(2030, 1, 1, 8, 0, tzinfo=timezone(timedelta(hours=1)))
    entry = cache_entry_from_answer("Accepted", expiry, None)
    assert entry is not None
    assert entry.expiry is expiry


def test_cached_answer_then_authorize() -> None:
    """An answer learnt into the cache is what authorize gives back offline."""
    entry = cache_entry_from_answer("Accepted", EXPIRIES["future"], PARENT)
    assert entry is not None
    key = token_key("card-7", None)
    assert should_cache(key, [{}, {}])
    decision = decide(token_key("CARD-7", None), {AuthSource.cache: {key: entry}})
    assert decision == AuthDecision(
        AuthStatus.Accepted, AuthSource.cache, EXPIRIES["future"], PARENT
    )
