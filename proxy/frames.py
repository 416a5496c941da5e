"""OCPP-J envelopes, sans I/O: parse only as far as routing needs, keep the raw text.

A frame is one of::

    [2, "<id>", "<Action>", {payload}]                       Call
    [3, "<id>", {payload}]                                   CallResult
    [4, "<id>", "<code>", "<description>", {details}]        CallError

:func:`parse` returns a :class:`Call`, :class:`CallResult` or :class:`CallError` holding
the raw text as received, or raises :class:`FrameError` with an :class:`ErrorKind`. The
kind is version-neutral; the per-version tables (``proxy.versions``) turn it into the
right CALLERROR code, or into silence where OCPP 1.6 says to ignore a message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

CALL = 2
CALLRESULT = 3
CALLERROR = 4

MAX_ID_LENGTH = 36
UNKNOWN_ID = "-1"


class ErrorKind(Enum):
    """Why a frame or a call cannot be handled; mapped to a code per OCPP version."""

    MALFORMED = "malformed"  # not JSON, not an array, binary frame
    BAD_ENVELOPE = "bad_envelope"  # wrong arity or element types
    BAD_ID = "bad_id"  # message id not a string of 1..36 characters
    UNKNOWN_TYPE = "unknown_type"  # message type id other than 2, 3, 4
    NOT_IMPLEMENTED = "not_implemented"  # unknown action
    NOT_SUPPORTED = "not_supported"  # known action the controller does not answer
    DUPLICATE_ID = "duplicate_id"  # an open call with the same id and another payload
    BUSY = "busy"  # too many calls waiting behind an unanswered one
    INTERNAL = "internal"  # the controller could not process the call (store failure)
    SECURITY = "security"  # call before the charger was accepted
    OCCURRENCE = "occurrence"  # a required field is missing
    TYPE = "type"  # a field has the wrong type
    PROPERTY = "property"  # a field has a value out of range


class FrameError(Exception):
    """A frame that cannot be routed. ``message_id`` is ``"-1"`` when unreadable."""

    def __init__(self, kind: ErrorKind, description: str, message_id: str = UNKNOWN_ID) -> None:
        super().__init__(description)
        self.kind = kind
        self.description = description
        self.message_id = message_id


@dataclass(slots=True)  # not frozen: built for every frame, frozen costs twice as much
class Call:
    id: str
    action: str
    payload: Any
    raw: str


@dataclass(slots=True)  # not frozen: built for every frame, frozen costs twice as much
class CallResult:
    id: str
    payload: Any
    raw: str


@dataclass(slots=True)  # not frozen: built for every frame, frozen costs twice as much
class CallError:
    id: str
    code: str
    description: str
    details: Any
    raw: str


Frame = Call | CallResult | CallError


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_BIG_INT = re.compile(r"[:,\[]\s*-?[0-9]{19}")


def _loads(text: str | bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        # orjson refuses a few documents that are valid JSON (lone surrogate escapes);
        # the standard parser takes those, but not NaN or Infinity, which are not JSON.
        try:
            return json.loads(text, parse_constant=_no_constants)
        except (ValueError, RecursionError):
            raise FrameError(ErrorKind.MALFORMED, "frame is not valid JSON") from None


def exact_payload(frame: Call | CallResult) -> Any:
    """The payload with every number exactly as written.

    :func:`parse` peeks with orjson, which reads integers beyond 64 bits as floats; the
    pass-through never re-serialises a payload, but the controller does when it answers,
    rewrites or replays one, and then asks for this.
    """
    if not _BIG_INT.search(frame.raw):
        return frame.payload
    return json.loads(frame.raw, parse_constant=_no_constants)[-1]


def parse(text: str | bytes) -> Frame:
    """Parse one WebSocket message into a frame, or raise :class:`FrameError`."""
    if not isinstance(text, str):
        raise FrameError(ErrorKind.MALFORMED, "binary frames are not OCPP-J")
    msg = _loads(text)
    if type(msg) is not list or not msg:
        raise FrameError(ErrorKind.MALFORMED, "frame is not a JSON array")
    n = len(msg)
    mtype = msg[0]
    mid = msg[1] if n > 1 else None
    echo = mid if type(mid) is str and 0 < len(mid) <= MAX_ID_LENGTH else UNKNOWN_ID
    if type(mtype) is not int:
        if type(mtype) is float and mtype.is_integer() and abs(mtype) >= 2**63:
            # an integer beyond 64 bits, read as a float: not a known message type
            raise FrameError(ErrorKind.UNKNOWN_TYPE, "message type is not supported", echo)
        raise FrameError(ErrorKind.BAD_ENVELOPE, "message type is not an integer", echo)
    if mtype not in (CALL, CALLRESULT, CALLERROR):
        raise FrameError(ErrorKind.UNKNOWN_TYPE, f"message type {mtype} is not supported", echo)
    if type(mid) is not str or not 0 < len(mid) <= MAX_ID_LENGTH:
        raise FrameError(ErrorKind.BAD_ID, "message id must be a string of 1 to 36 characters")
    if mtype == CALL:
        if n != 4:
            raise FrameError(ErrorKind.BAD_ENVELOPE, "a CALL has 4 elements", mid)
        action = msg[2]
        payload = msg[3]
        if type(action) is not str or not action:
            raise FrameError(ErrorKind.BAD_ENVELOPE, "action must be a string", mid)
        if payload is not None and type(payload) is not dict:
            raise FrameError(ErrorKind.BAD_ENVELOPE, "payload must be an object", mid)
        return Call(mid, action, payload, text)
    if mtype == CALLRESULT:
        if n != 3:
            raise FrameError(ErrorKind.BAD_ENVELOPE, "a CALLRESULT has 3 elements", mid)
        return CallResult(mid, msg[2], text)
    if n != 5 or type(msg[2]) is not str or type(msg[3]) is not str:
        raise FrameError(ErrorKind.BAD_ENVELOPE, "a CALLERROR has 5 elements", mid)
    return CallError(mid, msg[2], msg[3], msg[4], text)


_DECODER = json.JSONDecoder()


def with_message_id(raw: str, message_id: str) -> str:
    """The text of a stored CALL under another message id, the rest kept as it was.

    The old id is found by decoding the envelope's first elements, so an id written
    with escapes (``"a\\/b"``) is replaced as surely as a plain one.
    """
    pos = raw.index("[") + 1
    _, pos = _DECODER.raw_decode(raw, _skip(raw, pos))  # message type
    start = _skip(raw, raw.index(",", pos) + 1)
    _, end = _DECODER.raw_decode(raw, start)  # the old id
    return raw[:start] + _dumps(message_id) + raw[end:]


def _skip(text: str, pos: int) -> int:
    while text[pos] in " \t\r\n":
        pos += 1
    return pos


def _dumps(obj: Any) -> str:
    try:
        return orjson.dumps(obj).decode()
    except orjson.JSONEncodeError:
        # A lone surrogate escaped in a received id: the standard encoder escapes it back.
        return json.dumps(obj, separators=(",", ":"))


def call(message_id: str, action: str, payload: Any) -> str:
    """The text of a CALL the controller authors."""
    return _dumps([CALL, message_id, action, payload])


def result(message_id: str, payload: Any) -> str:
    """The text of a CALLRESULT the controller authors."""
    return _dumps([CALLRESULT, message_id, payload])


def error(message_id: str, code: str, description: str = "", details: Any = None) -> str:
    """The text of a CALLERROR; ``description`` never embeds the offending frame."""
    return _dumps([CALLERROR, message_id, code, description, details or {}])
