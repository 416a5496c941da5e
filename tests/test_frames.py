"""Tests of proxy.frames: the OCPP-J envelope parser and the frame builders (RELIABILITY §5.5)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import frames
from proxy.frames import Call, CallError, CallResult, ErrorKind, FrameError

BIG = 2**70 + 3  # beyond 64 bits, signed or not


def refusal(text: str | bytes) -> FrameError:
    """The FrameError that ``parse`` raises for ``text`` (fails if it returns a frame)."""
    with pytest.raises(FrameError) as info:
        frames.parse(text)
    return info.value


# -- B1, B2, B13: not an OCPP-J array -------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '[2,"a1","Heartbeat",{]',  # B1 example
        "",
        "   ",
        "not json",
        '[2,"a1",',
        '[3,"a1",{}] trailing',
        "[3,'a1',{}]",
        '[2,"a1","Heartbeat",{},]',
    ],
)
def test_malformed_json_is_malformed_with_unknown_id(text: str) -> None:
    """B1: text that is not JSON is MALFORMED and its id is "-1", even when it looks readable."""
    exc = refusal(text)
    assert exc.kind is ErrorKind.MALFORMED
    assert exc.message_id == frames.UNKNOWN_ID == "-1"


@pytest.mark.parametrize("text", ['[3,"a",NaN]', '[3,"a",Infinity]', '[3,"a",{"v":-Infinity}]'])
def test_non_json_number_constants_are_malformed(text: str) -> None:
    """B1: NaN and Infinity are not JSON (RFC 8259), so a frame carrying them is MALFORMED."""
    exc = refusal(text)
    assert exc.kind is ErrorKind.MALFORMED
    assert exc.message_id == "-1"


def test_nesting_too_deep_for_any_decoder_is_malformed() -> None:
    """B1: JSON nested beyond every decoder's depth limit is MALFORMED, not a RecursionError."""
    depth = 200_000
    exc = refusal('[3,"a",' + "[" * depth + "]" * depth + "]")
    assert exc.kind is ErrorKind.MALFORMED
    assert exc.message_id == "-1"


@pytest.mark.parametrize(
    "text", ['{"a":1}', "{}", "42", "null", "[]", '"[2,\\"a\\",\\"Heartbeat\\",{}]"', "true", "1.5"]
)
def test_json_that_is_not_a_non_empty_array_is_malformed(text: str) -> None:
    """B2: valid JSON that is not a non-empty array is MALFORMED with id "-1"."""
    exc = refusal(text)
    assert exc.kind is ErrorKind.MALFORMED
    assert exc.message_id == "-1"


@pytest.mark.parametrize(
    "data", [b"\x00\x01", b'[2,"a","Heartbeat",{}]', bytearray(b'[3,"a",{}]'), memoryview(b"[]")]
)
def test_binary_frames_are_malformed(data: Any) -> None:
    """B13: a binary WebSocket message is never OCPP-J, even when its bytes are a valid frame."""
    exc = refusal(data)
    assert exc.kind is ErrorKind.MALFORMED
    assert exc.message_id == "-1"


# -- B3: unknown message type --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message_id"),
    [
        ('[1,"a","Heartbeat",{}]', "a"),
        ('[5,"b1",{}]', "b1"),
        ('[0,"c"]', "c"),
        ('[-2,"d","Heartbeat",{}]', "d"),
        (f'[{2**64 + 2},"e",{{}}]', "e"),
        ('[5,"' + "x" * 36 + '"]', "x" * 36),
        ("[5]", "-1"),
        ("[5,7]", "-1"),
        ('[6,""]', "-1"),
        ('[6,"' + "x" * 37 + '"]', "-1"),
    ],
)
def test_unknown_message_type_echoes_a_readable_id(text: str, message_id: str) -> None:
    """B3: a type other than 2, 3, 4 is UNKNOWN_TYPE; the id is echoed when readable, else "-1"."""
    exc = refusal(text)
    assert exc.kind is ErrorKind.UNKNOWN_TYPE
    assert exc.message_id == message_id


# -- B4: bad envelope ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message_id"),
    [
        ('["2","a","Heartbeat",{}]', "a"),  # B4 example
        ('[2.0,"a","Heartbeat",{}]', "a"),
        ('[true,"a","Heartbeat",{}]', "a"),
        ('[null,"a","Heartbeat",{}]', "a"),
        ('[{},"a",{}]', "a"),
        ('["2",1,"Heartbeat",{}]', "-1"),
        ('["2"]', "-1"),
        ('[2,"a","Heartbeat"]', "a"),  # B4 example: wrong arity
        ('[2,"a"]', "a"),
        ('[2,"a","Heartbeat",{},{}]', "a"),
        ('[2,"a",7,{}]', "a"),
        ('[2,"a","",{}]', "a"),
        ('[2,"a",null,{}]', "a"),
        ('[2,"a","Heartbeat",[]]', "a"),
        ('[2,"a","Heartbeat","{}"]', "a"),
        ('[2,"a","Heartbeat",0]', "a"),
        ('[3,"a"]', "a"),
        ('[3,"a",{},{}]', "a"),
        ('[4,"a","GenericError","d"]', "a"),
        ('[4,"a","GenericError","d",{},{}]', "a"),
        ('[4,"a",1,"d",{}]', "a"),
        ('[4,"a","GenericError",null,{}]', "a"),
    ],
)
def test_bad_envelope_echoes_a_string_id(text: str, message_id: str) -> None:
    """B4: a non-integer type or a wrong arity or element type is BAD_ENVELOPE, id echoed."""
    exc = refusal(text)
    assert exc.kind is ErrorKind.BAD_ENVELOPE
    assert exc.message_id == message_id


# -- B5: bad message id --------------------------------------------------------------


@pytest.mark.parametrize("mtype", [2, 3, 4])
@pytest.mark.parametrize("bad_id", ["x" * 37, "", 1, 1.5, None, True, ["a"], {"id": "a"}], ids=repr)
def test_bad_message_id_is_bad_id_with_unknown_id(mtype: int, bad_id: Any) -> None:
    """B5: an id longer than 36 characters, empty, or not a string is BAD_ID with id "-1"."""
    rest = {2: ["Heartbeat", {}], 3: [{}], 4: ["GenericError", "", {}]}[mtype]
    exc = refusal(json.dumps([mtype, bad_id, *rest]))
    assert exc.kind is ErrorKind.BAD_ID
    assert exc.message_id == "-1"


def test_message_id_of_36_characters_is_accepted() -> None:
    """R11: 36 characters is the longest id, counted in characters, not bytes."""
    for mid in ("x" * 36, "é" * 36, "1"):
        frame = frames.parse(json.dumps([3, mid, {}], ensure_ascii=False))
        assert frame == CallResult(mid, {}, frame.raw)


# -- well-formed frames --------------------------------------------------------------


def test_call_is_parsed_and_keeps_the_raw_text() -> None:
    """A CALL yields its id, action and payload; raw is the received text, spacing included."""
    text = '[ 2 , "a1" ,\n "BootNotification", {"z": 1, "a": {"b": [1, 2.50]}} ]'
    frame = frames.parse(text)
    assert frame == Call("a1", "BootNotification", {"z": 1, "a": {"b": [1, 2.5]}}, text)
    assert frame.raw is text


def test_callresult_is_parsed_with_any_payload() -> None:
    """A CALLRESULT keeps whatever JSON payload it carries, untouched in raw."""
    for payload in ({}, {"status": "Accepted"}, None, [1], "x", 0):
        text = json.dumps([3, "r1", payload])
        assert frames.parse(text) == CallResult("r1", payload, text)


def test_callerror_is_parsed() -> None:
    """A CALLERROR yields its code, description and details."""
    text = '[4,"e1","NotImplemented","no such action",{"hint":"x"}]'
    assert frames.parse(text) == CallError(
        "e1", "NotImplemented", "no such action", {"hint": "x"}, text
    )


def test_null_payload_is_accepted() -> None:
    """B22: a CALL with a null payload is a valid CALL whose payload is None."""
    text = '[2,"a","Heartbeat",null]'
    assert frames.parse(text) == Call("a", "Heartbeat", None, text)


def test_unicode_and_escapes_stay_verbatim_in_raw() -> None:
    """Raw is the exact text: escapes are not decoded, non-ASCII is not re-encoded."""
    text = '[2,"a","DataTransfer",{"vendorId":"\\u00e9t\\u00e9","data":"ünï"}]'
    frame = frames.parse(text)
    assert frame.raw == text
    assert frame.payload == {"vendorId": "été", "data": "ünï"}


@pytest.mark.parametrize("value", [2**64 - 1, 2**64 + 1, BIG, -BIG, -(2**63) - 1])
def test_integers_beyond_64_bits_still_parse(value: int) -> None:
    """Integers beyond 64 bits are valid JSON: they parse, and the exact payload keeps them."""
    text = f'[2,"a","DataTransfer",{{"vendorId":"v","data":{value}}}]'
    frame = frames.parse(text)
    assert isinstance(frame, Call)
    assert frames.exact_payload(frame)["data"] == value
    assert type(frames.exact_payload(frame)["data"]) is int
    assert frame.raw == text


def test_lone_surrogate_escape_in_id_can_be_answered() -> None:
    """A parse failure echoing an id made of an escaped lone surrogate can still be answered.

    The text is valid UTF-8 and valid JSON; whatever ``parse`` decides, the CALLERROR built
    from its outcome must be text the controller can send.
    """
    for text in ('[5,"\\ud800"]', '[2,"\\udfff","Heartbeat",[]]'):
        exc = refusal(text)
        answer = frames.error(exc.message_id, "GenericError", exc.description)
        answer.encode("utf-8")
        assert isinstance(frames.parse(answer), CallError)


# -- builders ------------------------------------------------------------------------


def test_call_builder_parses_back() -> None:
    """frames.call() produces a CALL that parses to the same id, action and payload."""
    payload = {"chargePointVendor": "V", "n": [1, None, True, -2.5], "u": "été"}
    text = frames.call("m-1", "BootNotification", payload)
    assert frames.parse(text) == Call("m-1", "BootNotification", payload, text)
    assert frames.parse(frames.call("m-2", "Heartbeat", None)).payload is None


def test_result_builder_parses_back() -> None:
    """frames.result() produces a CALLRESULT that parses to the same id and payload."""
    text = frames.result("m-1", {"status": "Accepted", "interval": 300})
    assert frames.parse(text) == CallResult("m-1", {"status": "Accepted", "interval": 300}, text)


def test_error_builder_has_five_elements_and_defaults() -> None:
    """frames.error() has 5 elements; description "" and details {} when none (R12)."""
    text = frames.error("m-1", "GenericError")
    assert json.loads(text) == [4, "m-1", "GenericError", "", {}]
    assert frames.parse(text) == CallError("m-1", "GenericError", "", {}, text)
    detailed = frames.error("-1", "RpcFrameworkError", "why", {"k": 1})
    assert json.loads(detailed) == [4, "-1", "RpcFrameworkError", "why", {"k": 1}]


BAD_FRAMES = [
    '[2,"a1","Heartbeat",{]',
    '{"a":1,"secret":"s3cr3t-token"}',
    "[2,\"a1\",'Heartbeat',{}]",
    '["2","a1","Heartbeat",{"idTag":"TAG-0001"}]',
    '[2,"a1","Heartbeat"]',
    '[2,"' + "k" * 40 + '","Heartbeat",{}]',
    '[7,"a1","Heartbeat",{"idTag":"TAG-0001"}]',
]


@pytest.mark.parametrize("text", BAD_FRAMES)
def test_error_for_a_bad_frame_never_embeds_the_frame(text: str) -> None:
    """R12: the CALLERROR answering a bad frame is valid JSON and does not embed the frame."""
    exc = refusal(text)
    answer = frames.error(exc.message_id, "FormationViolation", exc.description)
    assert text not in answer
    assert text[1:-1] not in answer
    assert "{]" not in answer and "TAG-0001" not in answer and "s3cr3t" not in answer
    assert json.loads(answer)[:3] == [4, exc.message_id, "FormationViolation"]


# -- properties ----------------------------------------------------------------------

any_char = st.characters() | st.characters(codec=None, categories=["Cs"])
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(any_char, max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(any_char, max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
envelopes = st.builds(
    lambda head, mid, rest: [head, mid, *rest],
    st.sampled_from([2, 3, 4]) | json_scalars,
    st.text(any_char, max_size=40) | json_scalars,
    st.lists(json_values, max_size=4),
)


def check_parse_outcome(text: str) -> None:
    """Parse ``text``: a frame holding it verbatim, or a FrameError with a sendable-shaped id."""
    try:
        frame = frames.parse(text)
    except FrameError as exc:
        assert isinstance(exc.kind, ErrorKind)
        assert isinstance(exc.description, str)
        assert exc.message_id == "-1" or 0 < len(exc.message_id) <= frames.MAX_ID_LENGTH
        return
    assert isinstance(frame, Call | CallResult | CallError)
    assert frame.raw is text
    assert isinstance(frame.id, str) and 0 < len(frame.id) <= frames.MAX_ID_LENGTH
    if isinstance(frame, Call):
        assert isinstance(frame.action, str) and frame.action
        assert frame.payload is None or isinstance(frame.payload, dict)


@settings(max_examples=500, deadline=None)
@given(st.text(any_char, max_size=200))
def test_parse_of_any_text_returns_a_frame_or_raises_frame_error(text: str) -> None:
    """Property: for arbitrary text, parse returns a frame or raises FrameError, nothing else."""
    check_parse_outcome(text)


@settings(max_examples=500, deadline=None)
@given(json_values | envelopes, st.booleans())
def test_parse_of_any_json_value_returns_a_frame_or_raises_frame_error(
    value: Any, ascii_only: bool
) -> None:
    """Property: for arbitrary JSON values, parse returns a frame or raises FrameError."""
    check_parse_outcome(json.dumps(value, ensure_ascii=ascii_only))


text_chars = st.characters(exclude_categories=["Cs"])  # controller-authored text is UTF-8
ids = st.text(text_chars, min_size=1, max_size=36)
payloads = st.dictionaries(
    st.text(max_size=10),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**63 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=10,
    ),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(ids, st.text(text_chars, min_size=1, max_size=30), payloads)
def test_builders_round_trip(mid: str, action: str, payload: dict[str, Any]) -> None:
    """Property: call(), result() and error() texts parse back to what was built."""
    assert frames.parse(frames.call(mid, action, payload)).payload == payload
    built = frames.parse(frames.result(mid, payload))
    assert (built.id, built.payload) == (mid, payload)
    err = frames.parse(frames.error(mid, "GenericError", action, payload))
    assert isinstance(err, CallError)
    assert (err.id, err.code, err.description, err.details) == (
        mid,
        "GenericError",
        action,
        payload,
    )
