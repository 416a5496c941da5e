"""Offline authorization: the answer an id gets when the CSMS cannot be asked.

Pure functions of explicit inputs: no I/O, no clock (``now`` is passed in, timezone-aware
UTC). The decision is version-neutral; the OCPP 1.6 or 2.0.1 dialect turns an
:class:`AuthDecision` into ``idTagInfo`` or ``idTokenInfo``.

Sources, in this order (ARCHITECTURE.md, "Authorization while offline"):

1. the charger's own local list, as the CSMS last sent it with SendLocalList;
2. the site local list (operator file, CLI, admin API);
3. the site authorization cache (answers seen from the CSMS);
4. the unknown-id policy (AllowOfflineTxForUnknownId / OfflineTxForUnknownIdEnabled).

Rules:

* The first source that holds the key decides, whatever it says. A charger-list entry
  that is Blocked stays Blocked even if the site list says Accepted: the CSMS put it
  there, and a list entry that is not Accepted must be rejected (RELIABILITY.md R19).
* An Accepted entry whose expiry is at or before ``now`` is answered Expired. This holds
  for the cache too: an expired cache entry does not fall through to the unknown-id
  policy, which could accept it. An entry with any other status keeps that status
  whatever its expiry (Blocked says more than Expired).
* A malformed id (the caller passes ``valid=False``, see :func:`is_valid_id_tag`) is
  answered Invalid, never with an exception (RELIABILITY.md B11).
* Site-wide ConcurrentTx: an answer that would be Accepted for a transaction start
  becomes ConcurrentTx when the feature is on and the id is charging elsewhere on the
  site. The caller knows whether it is; this module keeps no state.

Keys: OCPP 1.6 looks ids up by idTag, OCPP 2.0.1 by idToken and type. The caller builds
a plain ``str`` key with :func:`token_key`, and every list and cache is keyed the same
way. Comparison is case-insensitive (CiString): the token is upper-cased with
``str.upper()``, which for printable ASCII only maps ``a-z`` to ``A-Z``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum

__all__ = [
    "AuthDecision",
    "AuthEntry",
    "AuthSource",
    "AuthStatus",
    "authorize",
    "cache_entry_from_answer",
    "is_valid_id_tag",
    "should_cache",
    "token_key",
]

# Printable ASCII, as CiString allows: space (0x20) to tilde (0x7E).
_PRINTABLE_MIN = 0x20
_PRINTABLE_MAX = 0x7E


class AuthStatus(StrEnum):
    """An authorization status, spelled as OCPP spells it (1.6 and 2.0.1 together).

    The first five exist in both versions; the rest only in 2.0.1. The 1.6 dialect
    has to map the 2.0.1-only ones (for example to Invalid) before answering a charger.
    """

    Accepted = "Accepted"
    Blocked = "Blocked"
    Expired = "Expired"
    Invalid = "Invalid"
    ConcurrentTx = "ConcurrentTx"
    NoCredit = "NoCredit"
    NotAllowedTypeEVSE = "NotAllowedTypeEVSE"
    NotAtThisLocation = "NotAtThisLocation"
    NotAtThisTime = "NotAtThisTime"
    Unknown = "Unknown"


class AuthSource(StrEnum):
    """Where a decision came from (for logs and metrics, never sent to a charger)."""

    charger_list = "charger_list"
    site_list = "site_list"
    cache = "cache"
    unknown_policy = "unknown_policy"
    malformed = "malformed"


def _is_aware(moment: datetime) -> bool:
    return moment.tzinfo is not None and moment.tzinfo.utcoffset(moment) is not None


@dataclass(frozen=True, slots=True)
class AuthEntry:
    """What a local list or the cache holds for one key.

    ``expiry`` must be timezone-aware (or None); a naive one raises ValueError, so that
    no comparison with ``now`` can fail later on the offline path.
    """

    status: AuthStatus
    expiry: datetime | None = None
    parent_id_tag: str | None = None

    def __post_init__(self) -> None:
        if self.expiry is not None and not _is_aware(self.expiry):
            raise ValueError("AuthEntry.expiry must be timezone-aware")


@dataclass(frozen=True, slots=True)
class AuthDecision:
    """The answer to give: status, the source that decided, and the entry's details."""

    status: AuthStatus
    source: AuthSource
    expiry: datetime | None = None
    parent_id_tag: str | None = None


def token_key(id_token: str, token_type: str | None) -> str:
    """Return the lookup key of an id.

    OCPP 1.6 (``token_type`` None): the upper-cased idTag. OCPP 2.0.1: ``"{type}:{TOKEN}"``,
    the type kept as given (it is an enumeration, compared exactly) and the token
    upper-cased. The function is idempotent on 1.6 keys.
    """
    normalised = id_token.upper()
    if token_type is None:
        return normalised
    return f"{token_type}:{normalised}"


def is_valid_id_tag(tag: str, max_len: int = 20) -> bool:
    """Tell whether ``tag`` is 1 to ``max_len`` printable ASCII characters.

    20 is CiString20 (1.6 idTag); pass 36 for a 2.0.1 identifierString idToken.
    """
    return 0 < len(tag) <= max_len and all(
        _PRINTABLE_MIN <= ord(char) <= _PRINTABLE_MAX for char in tag
    )


def _decide(entry: AuthEntry, source: AuthSource, now: datetime) -> AuthDecision:
    status = entry.status
    if status is AuthStatus.Accepted and entry.expiry is not None and entry.expiry <= now:
        status = AuthStatus.Expired
    return AuthDecision(status, source, entry.expiry, entry.parent_id_tag)


def authorize(
    key: str,
    *,
    now: datetime,
    charger_list: Mapping[str, AuthEntry],
    site_list: Mapping[str, AuthEntry],
    cache: Mapping[str, AuthEntry],
    allow_unknown: bool,
    concurrent_tx: bool = False,
    active_elsewhere: bool = False,
    for_start: bool = False,
    valid: bool = True,
) -> AuthDecision:
    """Decide the offline answer for ``key`` (built with :func:`token_key`).

    ``valid`` False (the id failed :func:`is_valid_id_tag`) gives Invalid from source
    ``malformed``. ``concurrent_tx`` is the site-wide ConcurrentTx setting,
    ``active_elsewhere`` whether the id is charging on another connector of the site,
    ``for_start`` whether the answer is for a transaction start (ConcurrentTx is only
    meaningful there). ``now`` must be timezone-aware, or ValueError is raised.
    """
    if not _is_aware(now):
        raise ValueError("now must be timezone-aware")
    if not valid:
        return AuthDecision(AuthStatus.Invalid, AuthSource.malformed)

    decision: AuthDecision | None = None
    sources = (
        (AuthSource.charger_list, charger_list),
        (AuthSource.site_list, site_list),
        (AuthSource.cache, cache),
    )
    for source, entries in sources:
        entry = entries.get(key)
        if entry is not None:
            decision = _decide(entry, source, now)
            break
    if decision is None:
        status = AuthStatus.Accepted if allow_unknown else AuthStatus.Invalid
        decision = AuthDecision(status, AuthSource.unknown_policy)

    if decision.status is AuthStatus.Accepted and concurrent_tx and for_start and active_elsewhere:
        decision = replace(decision, status=AuthStatus.ConcurrentTx)
    return decision


def should_cache(key: str, local_lists: Iterable[Mapping[str, AuthEntry]]) -> bool:
    """Tell whether the cache may learn from a CSMS answer about ``key``.

    It may, unless the key is in one of the local lists (OCPP 1.6 §3.5.1).
    """
    return not any(key in entries for entries in local_lists)


def cache_entry_from_answer(
    status: str, expiry: datetime | None, parent: str | None
) -> AuthEntry | None:
    """Turn the status, expiryDate and parentIdTag of an idTagInfo/idTokenInfo into an entry.

    Returns None, meaning "do not change the cache", for a status string that is not an
    OCPP authorization status (compared exactly, as OCPP enumerations are) and for
    ConcurrentTx: that answer describes the moment (the id is busy elsewhere), not the
    id, and caching it would refuse the id long after its other session ended.
    A naive ``expiry`` is taken as UTC (OCPP date-times are UTC).
    """
    try:
        auth_status = AuthStatus(status)
    except ValueError:
        return None
    if auth_status is AuthStatus.ConcurrentTx:
        return None
    if expiry is not None and not _is_aware(expiry):
        expiry = expiry.replace(tzinfo=UTC)
    return AuthEntry(auth_status, expiry, parent)
