"""Per-version tables, chosen once from the negotiated subprotocol.

The core stays version-neutral: it asks the :class:`Dialect` of a session which actions
exist, which carry transaction data, and how an :class:`~proxy.frames.ErrorKind` is
spelled on the wire (or whether OCPP 1.6 wants the message ignored).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.frames import Call, ErrorKind

#: Rewrites a charger call's transaction id upstream: (call, provisional -> CSMS id,
#: transactions to report DeAuthorized) -> the call to send.
RewriteUp = Callable[[Call, Mapping[int, int], Set[Any]], Call]
#: Rewrites a CSMS call's transaction id for the charger: (call, CSMS id -> provisional).
RewriteDown = Callable[[Call, Mapping[int, int]], Call]


#: The call that asks a charger to stop a transaction: (transaction id) -> (action, payload).
StopCall = Callable[[Any], tuple[str, dict[str, Any]]]
#: The call that sets a 0 limit on a transaction: (transaction id, connector or EVSE).
SuspendCall = Callable[[Any, int | None], tuple[str, dict[str, Any]]]


def no_policy_call(*args: Any) -> tuple[str, dict[str, Any]]:
    raise NotImplementedError("this OCPP version has no such call")


#: The key that recognises a charger's retry of a stored message: (action, payload,
#: message id).
DedupeKey = Callable[[str, Mapping[str, Any], str], str]


def payload_digest(action: str, parts: Any) -> str:
    """A short stable digest of ``parts`` under ``action``."""
    digest = hashlib.blake2b(
        orjson.dumps(parts, option=orjson.OPT_SORT_KEYS), digest_size=12
    ).hexdigest()
    return f"{action}:{digest}"


def has_own_time(payload: Mapping[str, Any], fields: tuple[str, ...] = ("timestamp",)) -> bool:
    """Whether a payload says when what it reports happened: one of ``fields`` at its top
    level, or a time on one of its meter values.

    Only then is the same content again the charger's retry of one message; without a
    time of its own the same status reported later (another firmware update, the same
    diagnostics upload result in a later outage) is a new message. (Loops and exact type
    checks, not ``any`` over ``Mapping``: this runs for every message stored.)
    """
    for field in fields:
        if payload.get(field) is not None:
            return True
    values = payload.get("meterValue")
    if type(values) is list:
        for value in values:
            if type(value) is dict and value.get("timestamp") is not None:
                return True
    return False


def call_digest(action: str, payload: Mapping[str, Any], message_id: str) -> str:
    """The key of a message without a time of its own: its content and its message id
    (a retry carries the id of the call it repeats; a new message has a new one)."""
    return payload_digest(action, (payload, message_id))


def no_rewrite_up(call: Call, ids: Mapping[int, int], deauthorized: Set[Any]) -> Call:
    return call


def no_rewrite_down(call: Call, ids: Mapping[int, int]) -> Call:
    return call


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between OCPP versions, as data."""

    subprotocol: str
    #: Every action of the version, either direction.
    actions: frozenset[str]
    #: Calls a charger sends on its own.
    charger_actions: frozenset[str]
    #: Charger calls that carry transaction data and must reach the CSMS in order.
    transaction_actions: frozenset[str]
    #: Actions whose exchanges the site learns from (authorization, local lists, boot).
    watched_actions: frozenset[str]
    #: Charger calls that are stored and answered locally until the outbox is drained.
    stored_actions: frozenset[str]
    #: CALLERROR code for each kind of error; ``None``: ignore the message, send nothing.
    error_codes: Mapping[ErrorKind, str | None]

    dedupe_key: DedupeKey = call_digest
    rewrite_up: RewriteUp = no_rewrite_up
    rewrite_down: RewriteDown = no_rewrite_down
    stop_call: StopCall = no_policy_call
    suspend_call: SuspendCall = no_policy_call

    def error_code(self, kind: ErrorKind) -> str | None:
        return self.error_codes[kind]


def dialect_for(subprotocol: str) -> Dialect:
    """The dialect of a negotiated subprotocol (raises KeyError for anything else)."""
    from proxy.versions import ocpp16, ocpp201

    table = {
        ocpp16.DIALECT.subprotocol: ocpp16.DIALECT,
        ocpp201.DIALECT.subprotocol: ocpp201.DIALECT,
        ocpp201.DIALECT_21.subprotocol: ocpp201.DIALECT_21,
    }
    return table[subprotocol]


#: Subprotocols the controller speaks, in the order it prefers them.
SUPPORTED_SUBPROTOCOLS: tuple[str, ...] = ("ocpp2.0.1", "ocpp1.6", "ocpp2.1")
