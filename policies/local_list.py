"""Local authorization lists: SendLocalList updates and the operator's CSV file.

Pure functions, no I/O. Lists are ``dict[str, AuthEntry]`` keyed by
:func:`policies.authorization.token_key`; functions here never mutate their input.

SendLocalList (OCPP 1.6 §5.15, 2.0.1 D01): a Full update replaces the list; a
Differential update adds or replaces the entries that carry idTagInfo/idTokenInfo and
removes the keys that come without it (``None`` here). The list version is carried for
the caller, which stores it; :func:`apply_update` does not look at it.

The site list CSV has a header row and four columns::

    id_tag,status,expiry,parent_id_tag
    04A2B3C4D5,Accepted,2026-12-31T23:59:59Z,
    CARD-7,,,FLEET-1
    OLDCARD,Blocked,,

* ``id_tag``: 1-20 printable ASCII characters (CiString20), taken verbatim (spaces are
  legal characters, so nothing is stripped); stored under its normalised key, and two
  rows whose tags differ only in case are duplicates.
* ``status``: an :class:`AuthStatus` spelling, matched case-insensitively; empty means
  Accepted.
* ``expiry``: ISO 8601 date-time with a UTC offset (``Z`` or ``+01:00``); empty means no
  expiry. A date-time without an offset is rejected rather than guessed.
* ``parent_id_tag``: empty, or 1-20 printable ASCII characters, kept verbatim.

Blank lines are skipped and a leading byte-order mark is ignored. The first bad row
raises :class:`ListFormatError` with its 1-based line number, so a file is imported whole
or not at all. Error messages never quote the id tag.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from policies.authorization import AuthEntry, AuthStatus, is_valid_id_tag, token_key

__all__ = [
    "CSV_COLUMNS",
    "ListFormatError",
    "ListUpdate",
    "apply_update",
    "decode_csv",
    "format_csv",
    "parse_csv",
]

CSV_COLUMNS = ("id_tag", "status", "expiry", "parent_id_tag")

_ID_TAG_MAX_LEN = 20
_STATUSES = {status.value.casefold(): status for status in AuthStatus}


@dataclass(frozen=True)
class ListUpdate:
    """One SendLocalList request, version-neutral.

    ``entries`` pairs a key with its new entry, or with None to remove the key
    (Differential only; in a Full update a None entry is ignored).
    """

    version: int
    update_type: Literal["Full", "Differential"]
    entries: tuple[tuple[str, AuthEntry | None], ...] = ()

    def __post_init__(self) -> None:
        if self.update_type not in ("Full", "Differential"):
            raise ValueError("update_type must be 'Full' or 'Differential'")


def apply_update(current: Mapping[str, AuthEntry], update: ListUpdate) -> dict[str, AuthEntry]:
    """Return the list after ``update``; ``current`` is left as it was.

    Entries apply in order, so a key given twice ends with its last entry.
    """
    if update.update_type == "Full":
        return {key: entry for key, entry in update.entries if entry is not None}
    result = dict(current)
    for key, entry in update.entries:
        if entry is None:
            result.pop(key, None)
        else:
            result[key] = entry
    return result


class ListFormatError(ValueError):
    """A site list file that cannot be imported; ``line`` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


def decode_csv(data: bytes) -> str:
    """The text of a site list file's bytes, which must be UTF-8.

    Raises :class:`ListFormatError` with the line of the first byte that is not.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ListFormatError(data[: exc.start].count(b"\n") + 1, "not UTF-8 text") from None


def _rows(text: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (first line number, fields) for each non-blank CSV record."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
    end = 0
    while True:
        start = end + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ListFormatError(start, f"not valid CSV ({exc})") from None
        end = reader.line_num
        if row:
            yield start, row


def _parse_status(text: str, line: int) -> AuthStatus:
    if not text:
        return AuthStatus.Accepted
    status = _STATUSES.get(text.casefold())
    if status is None:
        raise ListFormatError(line, f"unknown status {text!r}")
    return status


def _parse_expiry(text: str, line: int) -> datetime | None:
    if not text:
        return None
    try:
        expiry = datetime.fromisoformat(text)
    except ValueError:
        raise ListFormatError(line, f"expiry {text!r} is not an ISO 8601 date-time") from None
    if expiry.tzinfo is None or expiry.utcoffset() is None:
        raise ListFormatError(
            line, f"expiry {text!r} has no UTC offset (write e.g. 2026-12-31T23:59:59Z)"
        )
    return expiry


def parse_csv(text: str) -> dict[str, AuthEntry]:
    """Parse a site list file into entries keyed by ``token_key(id_tag, None)``.

    Raises :class:`ListFormatError` at the first bad row (see the module docstring).
    """
    rows = _rows(text)
    header = next(rows, None)
    if header is None:
        raise ListFormatError(1, f"missing header row {','.join(CSV_COLUMNS)}")
    line, fields = header
    if tuple(field.strip() for field in fields) != CSV_COLUMNS:
        raise ListFormatError(line, f"header must be {','.join(CSV_COLUMNS)}")

    entries: dict[str, AuthEntry] = {}
    first_seen: dict[str, int] = {}
    for line, fields in rows:
        if len(fields) != len(CSV_COLUMNS):
            raise ListFormatError(line, f"expected {len(CSV_COLUMNS)} columns, found {len(fields)}")
        tag, status_text, expiry_text, parent = fields
        if not is_valid_id_tag(tag, _ID_TAG_MAX_LEN):
            raise ListFormatError(line, "id_tag must be 1-20 printable ASCII characters")
        status = _parse_status(status_text.strip(), line)
        expiry = _parse_expiry(expiry_text.strip(), line)
        if parent and not is_valid_id_tag(parent, _ID_TAG_MAX_LEN):
            raise ListFormatError(line, "parent_id_tag must be 1-20 printable ASCII characters")
        key = token_key(tag, None)
        if key in first_seen:
            raise ListFormatError(
                line, f"duplicate id_tag (first on line {first_seen[key]}, case-insensitive)"
            )
        first_seen[key] = line
        entries[key] = AuthEntry(status, expiry, parent or None)
    return entries


def _format_expiry(expiry: datetime | None) -> str:
    if expiry is None:
        return ""
    return expiry.astimezone(UTC).isoformat().replace("+00:00", "Z")


def format_csv(entries: Mapping[str, AuthEntry]) -> str:
    """Write entries as a site list file that :func:`parse_csv` reads back equal.

    Keys are written as stored, in the mapping's order; expiries in UTC with ``Z``.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for key, entry in entries.items():
        writer.writerow(
            [key, entry.status.value, _format_expiry(entry.expiry), entry.parent_id_tag or ""]
        )
    return out.getvalue()
