"""Tests of policies.local_list: SendLocalList updates and the site list CSV."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import policies.local_list
from policies.authorization import AuthEntry, AuthStatus, token_key
from policies.local_list import (
    CSV_COLUMNS,
    ListFormatError,
    ListUpdate,
    apply_update,
    decode_csv,
    format_csv,
    parse_csv,
)

HEADER = "id_tag,status,expiry,parent_id_tag\n"
ACCEPTED = AuthEntry(AuthStatus.Accepted)
BLOCKED = AuthEntry(AuthStatus.Blocked)

printable_tags = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20
)
keys = printable_tags.map(lambda tag: token_key(tag, None))
offsets = st.sampled_from(
    [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
)
entries = st.builds(
    AuthEntry,
    status=st.sampled_from(AuthStatus),
    expiry=st.none()
    | st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=offsets
    ),
    parent_id_tag=st.none() | printable_tags,
)
updates = st.lists(st.tuples(keys, st.none() | entries), max_size=8)


# --- the module stays pure -------------------------------------------------------------


def test_module_imports_no_io_libraries() -> None:
    """The local list policy imports nothing that does I/O, logging or asyncio."""
    source = Path(policies.local_list.__file__).read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    forbidden = {"asyncio", "websockets", "aiosqlite", "sqlite3", "logging", "structlog", "os"}
    assert not imported & forbidden


# --- SendLocalList ---------------------------------------------------------------------


def test_update_type_is_checked() -> None:
    """A ListUpdate with an update type other than Full or Differential is refused."""
    bad: Any = "Partial"
    with pytest.raises(ValueError, match="update_type"):
        ListUpdate(1, bad, ())


def test_full_replaces_the_list() -> None:
    """A Full update drops every old entry and keeps only the new ones."""
    current = {"A": ACCEPTED, "B": ACCEPTED}
    update = ListUpdate(2, "Full", (("B", BLOCKED), ("C", ACCEPTED)))
    assert apply_update(current, update) == {"B": BLOCKED, "C": ACCEPTED}


def test_full_without_entries_empties_the_list() -> None:
    """A Full update without entries gives an empty list."""
    assert apply_update({"A": ACCEPTED}, ListUpdate(3, "Full")) == {}


def test_full_ignores_entries_without_info() -> None:
    """In a Full update an entry without idTagInfo is ignored."""
    update = ListUpdate(2, "Full", (("A", None), ("B", ACCEPTED)))
    assert apply_update({"A": ACCEPTED}, update) == {"B": ACCEPTED}


def test_differential_adds_updates_and_removes() -> None:
    """A Differential update adds new keys, replaces existing ones and removes bare keys."""
    current = {"KEEP": ACCEPTED, "CHANGE": ACCEPTED, "DROP": ACCEPTED}
    update = ListUpdate(5, "Differential", (("CHANGE", BLOCKED), ("DROP", None), ("NEW", ACCEPTED)))
    assert apply_update(current, update) == {"KEEP": ACCEPTED, "CHANGE": BLOCKED, "NEW": ACCEPTED}


def test_differential_removing_absent_key_is_harmless() -> None:
    """Removing a key that is not in the list changes nothing."""
    assert apply_update({"A": ACCEPTED}, ListUpdate(2, "Differential", (("Z", None),))) == {
        "A": ACCEPTED
    }


def test_differential_applies_entries_in_order() -> None:
    """A key given twice in one update ends with its last entry."""
    update = ListUpdate(2, "Differential", (("A", BLOCKED), ("A", None), ("A", ACCEPTED)))
    assert apply_update({}, update) == {"A": ACCEPTED}


def test_apply_update_returns_a_new_dict() -> None:
    """apply_update never returns or changes the dict it was given."""
    current = {"A": ACCEPTED}
    result = apply_update(current, ListUpdate(2, "Differential"))
    assert result == current
    assert result is not current
    result["B"] = BLOCKED
    assert current == {"A": ACCEPTED}


@settings(database=None)
@given(current=st.dictionaries(keys, entries, max_size=6), new=st.dictionaries(keys, entries))
def test_full_equals_its_entries(current: dict[str, AuthEntry], new: dict[str, AuthEntry]) -> None:
    """After a Full update the list is exactly the update's entries."""
    assert apply_update(current, ListUpdate(1, "Full", tuple(new.items()))) == new


@settings(database=None)
@given(current=st.dictionaries(keys, entries, max_size=6), key=keys, entry=entries)
def test_differential_add_then_delete(
    current: dict[str, AuthEntry], key: str, entry: AuthEntry
) -> None:
    """Adding then deleting a key leaves it absent and every other key untouched."""
    added = apply_update(current, ListUpdate(1, "Differential", ((key, entry),)))
    assert added[key] == entry
    removed = apply_update(added, ListUpdate(2, "Differential", ((key, None),)))
    assert key not in removed
    assert removed == {k: v for k, v in current.items() if k != key}


@settings(database=None)
@given(current=st.dictionaries(keys, entries, max_size=6), first=updates, second=updates)
def test_differential_is_sequential(
    current: dict[str, AuthEntry],
    first: list[tuple[str, AuthEntry | None]],
    second: list[tuple[str, AuthEntry | None]],
) -> None:
    """One Differential update equals its halves applied one after the other."""
    whole = apply_update(current, ListUpdate(1, "Differential", tuple(first + second)))
    step = apply_update(current, ListUpdate(1, "Differential", tuple(first)))
    assert whole == apply_update(step, ListUpdate(2, "Differential", tuple(second)))


@settings(database=None)
@given(
    current=st.dictionaries(keys, entries, max_size=6),
    items=updates,
    update_type=st.sampled_from(["Full", "Differential"]),
)
def test_apply_update_does_not_mutate(
    current: dict[str, AuthEntry], items: list[tuple[str, AuthEntry | None]], update_type: Any
) -> None:
    """The current list is the same before and after any update."""
    before = dict(current)
    apply_update(current, ListUpdate(1, update_type, tuple(items)))
    assert current == before


# --- CSV: reading ----------------------------------------------------------------------


def test_parse_example_file() -> None:
    """The documented example file parses to the expected entries."""
    text = (
        HEADER
        + "04A2B3C4D5,Accepted,2026-12-31T23:59:59Z,\n"
        + "card-7,,,FLEET-1\n"
        + "OldCard,Blocked,,\n"
    )
    assert parse_csv(text) == {
        "04A2B3C4D5": AuthEntry(
            AuthStatus.Accepted, datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
        ),
        "CARD-7": AuthEntry(AuthStatus.Accepted, None, "FLEET-1"),
        "OLDCARD": AuthEntry(AuthStatus.Blocked),
    }


def test_parse_header_only() -> None:
    """A file with only the header is an empty list."""
    assert parse_csv(HEADER) == {}


@pytest.mark.parametrize("status", list(AuthStatus))
@pytest.mark.parametrize("spelling", [str.lower, str.upper, str])
def test_parse_every_status_any_case(status: AuthStatus, spelling: Any) -> None:
    """Every status is read, its spelling matched case-insensitively."""
    text = HEADER + f"TAG,{spelling(status.value)},,\n"
    assert parse_csv(text) == {"TAG": AuthEntry(status)}


def test_parse_strips_spaces_around_status_and_expiry() -> None:
    """Spaces around status and expiry are ignored."""
    text = HEADER + "TAG, blocked , 2030-01-01T00:00:00+00:00 ,\n"
    assert parse_csv(text) == {
        "TAG": AuthEntry(AuthStatus.Blocked, datetime(2030, 1, 1, tzinfo=UTC))
    }


def test_parse_keeps_id_tag_and_parent_verbatim() -> None:
    """Spaces inside tags are legal and kept; only the key is upper-cased."""
    text = HEADER + "' card 7 ',,,' fleet '\n"
    assert parse_csv(text) == {"' CARD 7 '": AuthEntry(AuthStatus.Accepted, None, "' fleet '")}


def test_parse_expiry_offset_is_kept_as_instant() -> None:
    """An expiry with an offset compares equal to the same instant in UTC."""
    entry = parse_csv(HEADER + "TAG,,2030-01-01T02:00:00+02:00,\n")["TAG"]
    assert entry.expiry == datetime(2030, 1, 1, tzinfo=UTC)


def test_parse_quoted_fields_and_crlf() -> None:
    """Quoted fields with commas and CRLF line ends are read."""
    text = 'id_tag,status,expiry,parent_id_tag\r\n"A,B",Accepted,,\r\nC,Blocked,,\r\n'
    assert parse_csv(text) == {"A,B": ACCEPTED, "C": BLOCKED}


def test_parse_skips_blank_lines_and_bom() -> None:
    """A byte-order mark and blank lines are ignored, and line numbers stay physical."""
    text = "\ufeff\n" + HEADER + "\nA,,,\n\nB,bogus,,\n"
    with pytest.raises(ListFormatError) as caught:
        parse_csv(text)
    assert caught.value.line == 6


def test_decode_utf8_and_the_line_of_a_byte_that_is_not() -> None:
    """UTF-8 bytes decode as they are (a byte-order mark is left for parse_csv); the
    first byte that is not UTF-8 is reported with its line, without quoting the row."""
    assert parse_csv(decode_csv(b"\xef\xbb\xbf" + HEADER.encode() + b"A,,,\n")) == {"A": ACCEPTED}
    with pytest.raises(ListFormatError) as caught:
        decode_csv(HEADER.encode() + b"A,,,\n\nSECRET\xe9,,,\n")
    assert (caught.value.line, caught.value.message) == (4, "not UTF-8 text")


def test_parse_header_with_spaces() -> None:
    """Spaces around header names are tolerated."""
    assert parse_csv(" id_tag , status , expiry , parent_id_tag \nA,,,\n") == {"A": ACCEPTED}


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("", 1, "missing header"),
        ("\n\n", 1, "missing header"),
        ("A,Accepted,,\n", 1, "header must be"),
        ("id_tag,status,expiry\n", 1, "header must be"),
        ("ID_TAG,STATUS,EXPIRY,PARENT_ID_TAG\n", 1, "header must be"),
        (HEADER + "A,Maybe,,\n", 2, "unknown status"),
        (HEADER + "A,,tomorrow,\n", 2, "not an ISO 8601"),
        (HEADER + "A,,2030-02-30T00:00:00Z,\n", 2, "not an ISO 8601"),
        (HEADER + "A,,2030-01-01T00:00:00,\n", 2, "no UTC offset"),
        (HEADER + "A,,2030-01-01,\n", 2, "no UTC offset"),
        (HEADER + "A" * 21 + ",,,\n", 2, "id_tag must be"),
        (HEADER + ",Accepted,,\n", 2, "id_tag must be"),
        (HEADER + "A\x10\x0e,,,\n", 2, "id_tag must be"),
        (HEADER + "caf\u00e9,,,\n", 2, "id_tag must be"),
        (HEADER + "A,,," + "P" * 21 + "\n", 2, "parent_id_tag must be"),
        (HEADER + "A,,,P\x07\n", 2, "parent_id_tag must be"),
        (HEADER + "A,,\n", 2, "expected 4 columns, found 3"),
        (HEADER + "A,,,,\n", 2, "expected 4 columns, found 5"),
        (HEADER + " \n", 2, "expected 4 columns, found 1"),
        (HEADER + "abc,,,\nB,,,\nABC,Blocked,,\n", 4, "duplicate id_tag (first on line 2"),
        (HEADER + 'A,"Accepted"x,,\n', 2, "not valid CSV"),
        (HEADER + "A,,,\n" + '"B\nC,,,\n', 3, "not valid CSV"),
        (HEADER + '"B\nC",,,\n', 2, "id_tag must be"),
    ],
)
def test_parse_errors(text: str, line: int, fragment: str) -> None:
    """The first bad row raises ListFormatError with its 1-based line number."""
    with pytest.raises(ListFormatError) as caught:
        parse_csv(text)
    assert caught.value.line == line
    assert fragment in caught.value.message


def test_parse_error_stops_at_first_bad_row() -> None:
    """With two bad rows the first one is reported and nothing is returned."""
    text = HEADER + "A,,,\nB,nope,,\nC,,never,\n"
    with pytest.raises(ListFormatError) as caught:
        parse_csv(text)
    assert caught.value.line == 3


def test_format_error_never_quotes_the_tag() -> None:
    """Error messages leave the id tag out (tags are not written to logs in clear)."""
    for text in (HEADER + "SECRETTAG" * 3 + ",,,\n", HEADER + "SECRET,,,\nsecret,,,\n"):
        with pytest.raises(ListFormatError) as caught:
            parse_csv(text)
        assert "SECRET" not in str(caught.value).upper()


def test_list_format_error_shape() -> None:
    """ListFormatError is a ValueError carrying line and message."""
    error = ListFormatError(7, "unknown status 'x'")
    assert isinstance(error, ValueError)
    assert (error.line, error.message) == (7, "unknown status 'x'")
    assert str(error) == "line 7: unknown status 'x'"


@settings(database=None)
@given(st.text(max_size=200))
def test_parse_arbitrary_text(text: str) -> None:
    """Any text either parses or raises ListFormatError with a line number."""
    try:
        result = parse_csv(text)
    except ListFormatError as error:
        assert error.line >= 1
    else:
        assert all(key == token_key(key, None) for key in result)


@settings(database=None)
@given(rows=st.lists(st.lists(st.text(max_size=25), min_size=4, max_size=4), max_size=6))
def test_parse_arbitrary_rows(rows: list[list[str]]) -> None:
    """Rows of any four fields after a valid header parse or raise ListFormatError."""
    text = HEADER + "".join(",".join(row) + "\n" for row in rows)
    try:
        parse_csv(text)
    except ListFormatError as error:
        assert error.line >= 2
        assert error.line <= text.count("\n") + 1


# --- CSV: writing ----------------------------------------------------------------------


def test_format_columns_and_values() -> None:
    """format_csv writes the header, then one row per entry with UTC expiries ending in Z."""
    expiry = datetime(2030, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    text = format_csv(
        {
            "A,B": AuthEntry(AuthStatus.Accepted, expiry, "FLEET"),
            "C": AuthEntry(AuthStatus.NotAtThisTime),
        }
    )
    assert text == (
        ",".join(CSV_COLUMNS)
        + "\n"
        + '"A,B",Accepted,2030-01-01T00:00:00Z,FLEET\n'
        + "C,NotAtThisTime,,\n"
    )


def test_format_empty() -> None:
    """An empty list is written as the header alone."""
    assert format_csv({}) == HEADER


def test_format_keeps_keys_as_stored() -> None:
    """Keys are written as stored, not normalised again."""
    assert format_csv({"ISO14443:ab": ACCEPTED}).splitlines()[1] == "ISO14443:ab,Accepted,,"


@settings(database=None)
@given(st.dictionaries(keys, entries, max_size=10))
def test_csv_round_trip(stored: dict[str, AuthEntry]) -> None:
    """parse_csv(format_csv(x)) gives back x, in the same order."""
    parsed = parse_csv(format_csv(stored))
    assert parsed == stored
    assert list(parsed) == list(stored)
