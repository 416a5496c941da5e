"""Tests of proxy.router: the per-charger state machine (R9-R12, §5.5 B1-B8, B22, B24)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy import frames
from proxy.frames import Call, CallError, CallResult
from proxy.router import (
    OWN_ID_PREFIX,
    Answer,
    Effect,
    Exchange,
    Note,
    Origin,
    OwnResult,
    ReplayResult,
    Router,
    State,
    ToCharger,
    ToCsms,
    Unresponsive,
)
from proxy.versions import Dialect, dialect_for

D16 = dialect_for("ocpp1.6")
D201 = dialect_for("ocpp2.0.1")
DIALECTS = pytest.mark.parametrize("dialect", [D16, D201], ids=["1.6", "2.0.1"])
TIMEOUT = 30.0


def hb(mid: str) -> str:
    """A Heartbeat CALL with id ``mid``."""
    return frames.call(mid, "Heartbeat", {})


def ok(mid: str, payload: Any = None) -> str:
    """A CALLRESULT with id ``mid``."""
    return frames.result(mid, {"status": "Accepted"} if payload is None else payload)


def wire(effects: list[Effect]) -> list[Effect]:
    """The effects with ToCsms/ToCharger reduced to their text (metadata such as the action
    of a relayed frame is checked on its own, in test_relayed_frames_carry_their_action)."""
    out: list[Effect] = []
    for e in effects:
        if isinstance(e, ToCsms):
            out.append(ToCsms(e.text))
        elif isinstance(e, ToCharger):
            out.append(ToCharger(e.text))
        else:
            out.append(e)
    return out


class TextRouter(Router):
    """The router under test, its effects compared by the text they send."""

    def charger_frame(self, text: str | bytes, now: float) -> list[Effect]:
        return wire(super().charger_frame(text, now))

    def csms_frame(self, text: str | bytes, now: float) -> list[Effect]:
        return wire(super().csms_frame(text, now))

    def own_call(self, action: str, payload: Any, now: float) -> list[Effect]:
        return wire(super().own_call(action, payload, now))

    def replay_call(self, call: Call, now: float) -> list[Effect]:
        return wire(super().replay_call(call, now))

    def abandon_upstream(self, message_id: str, now: float) -> list[Effect]:
        return wire(super().abandon_upstream(message_id, now))

    def uplink_lost(self, now: float | None = None) -> list[Effect]:
        return wire(super().uplink_lost(now))

    def expire(self, now: float) -> list[Effect]:
        return wire(super().expire(now))


def router(dialect: Dialect = D16, **kwargs: Any) -> Router:
    """A router with the test's call timeout unless told otherwise."""
    kwargs.setdefault("call_timeout", TIMEOUT)
    return TextRouter(dialect, **kwargs)


def sent(effects: list[Effect]) -> list[Effect]:
    """The effects that put text on a socket or hand a call to the offline responder."""
    return [e for e in effects if not isinstance(e, Note)]


def notes(effects: list[Effect]) -> list[str]:
    """The event names of the Note effects."""
    return [e.event for e in effects if isinstance(e, Note)]


def only_error(effects: list[Effect], side: type[ToCharger] | type[ToCsms]) -> list[Any]:
    """The single CALLERROR sent to ``side``, as a JSON list; fails if anything else was sent."""
    out = sent(effects)
    assert len(out) == 1, effects
    assert type(out[0]) is side, effects
    data = json.loads(out[0].text)
    assert isinstance(frames.parse(out[0].text), CallError)
    return data


# -- pass-through --------------------------------------------------------------------


@DIALECTS
def test_charger_call_goes_to_the_csms_as_the_same_text(dialect: Dialect) -> None:
    """A charger CALL is forwarded to the CSMS as exactly the text received."""
    text = '[2, "a1" ,\n"BootNotification",{"z":1,  "chargePointVendor":"V"}]'
    assert router(dialect).charger_frame(text, 0.0) == [ToCsms(text)]


@DIALECTS
def test_csms_answer_goes_to_the_charger_as_the_same_text(dialect: Dialect) -> None:
    """The CSMS CALLRESULT to a forwarded call reaches the charger as exactly the text."""
    r = router(dialect)
    r.charger_frame(hb("a1"), 0.0)
    answer = '[3,"a1", {"currentTime" : "2025-01-01T00:00:00Z"}]'
    assert r.csms_frame(answer, 1.0) == [ToCharger(answer)]


def test_csms_callerror_goes_to_the_charger_as_the_same_text() -> None:
    """A CSMS CALLERROR to a forwarded call is relayed verbatim, not rewritten."""
    r = router()
    r.charger_frame(hb("a1"), 0.0)
    answer = '[4,"a1","InternalError","oops", {}]'
    assert r.csms_frame(answer, 1.0) == [ToCharger(answer)]


@DIALECTS
def test_csms_call_goes_to_the_charger_and_its_answer_back(dialect: Dialect) -> None:
    """A CSMS CALL reaches the charger verbatim; the charger's CALLRESULT goes back verbatim."""
    r = router(dialect)
    call = '[2,"c1","Reset",{"type" :"Soft"}]'
    assert r.csms_frame(call, 0.0) == [ToCharger(call)]
    answer = '[3,"c1",{"status":"Accepted"} ]'
    assert r.charger_frame(answer, 1.0) == [ToCsms(answer)]


def test_charger_callerror_to_a_csms_call_goes_back_verbatim() -> None:
    """A charger CALLERROR answering a CSMS call is relayed to the CSMS verbatim."""
    r = router()
    r.csms_frame(frames.call("c1", "Reset", {"type": "Soft"}), 0.0)
    answer = '[4,"c1","NotSupported","",{}]'
    assert r.charger_frame(answer, 1.0) == [ToCsms(answer)]


def test_null_payload_call_is_forwarded_as_is() -> None:
    """B22: a CALL with a null payload is forwarded online, unchanged."""
    text = '[2,"a","Heartbeat",null]'
    assert router().charger_frame(text, 0.0) == [ToCsms(text)]


def test_calls_may_cross() -> None:
    """R10: a charger call and a CSMS call may be open at once; each answer goes to its side."""
    r = router()
    assert r.charger_frame(hb("up"), 0.0) == [ToCsms(hb("up"))]
    assert r.csms_frame(frames.call("down", "Reset", {"type": "Soft"}), 0.5) == [
        ToCharger(frames.call("down", "Reset", {"type": "Soft"}))
    ]
    assert r.charger_frame(ok("down"), 1.0) == [ToCsms(ok("down"))]
    assert r.csms_frame(ok("up"), 1.5) == [ToCharger(ok("up"))]


def test_csms_and_charger_calls_with_the_same_id_do_not_mix() -> None:
    """Ids are per sender: a CSMS call and a charger call may share an id without confusion."""
    r = router()
    r.charger_frame(hb("same"), 0.0)
    r.csms_frame(frames.call("same", "Reset", {"type": "Soft"}), 0.0)
    assert r.charger_frame(ok("same", {"status": "Rejected"}), 1.0) == [
        ToCsms(ok("same", {"status": "Rejected"}))
    ]
    assert r.csms_frame(ok("same"), 1.0) == [ToCharger(ok("same"))]


def test_relayed_frames_carry_their_action() -> None:
    """Relayed frames name the action they belong to (for metrics); authored errors do not."""
    r = Router(D16, call_timeout=TIMEOUT)
    status = frames.call("s1", "StatusNotification", {"connectorId": 1})
    assert r.charger_frame(status, 0.0) == [ToCsms(status, "StatusNotification")]
    assert r.csms_frame(ok("s1"), 1.0) == [ToCharger(ok("s1"), "StatusNotification")]
    reset = frames.call("c1", "Reset", {"type": "Soft"})
    assert r.csms_frame(reset, 2.0) == [ToCharger(reset, "Reset")]
    assert r.charger_frame(ok("c1"), 3.0) == [ToCsms(ok("c1"), "Reset")]
    refused = r.charger_frame('[2,"x","FooBar",{}]', 4.0)
    assert [e.action for e in refused if isinstance(e, ToCharger)] == [None]


# -- one outstanding call per direction (R10, B24) -----------------------------------


def test_second_charger_call_is_queued_until_the_first_is_answered() -> None:
    """R10: a second charger call waits; it goes up right after the first one's answer."""
    r = router()
    assert r.charger_frame(hb("a"), 0.0) == [ToCsms(hb("a"))]
    second = r.charger_frame(hb("b"), 1.0)
    assert sent(second) == []
    assert notes(second) == ["charger_call_queued"]
    assert r.csms_frame(ok("a"), 2.0) == [ToCharger(ok("a")), ToCsms(hb("b"))]
    assert r.csms_frame(ok("b"), 3.0) == [ToCharger(ok("b"))]


def test_queued_charger_calls_go_up_in_arrival_order() -> None:
    """Queued charger calls reach the CSMS one at a time, first in first out."""
    r = router()
    r.charger_frame(hb("a"), 0.0)
    for mid in "bcd":
        r.charger_frame(hb(mid), 1.0)
    order = []
    for mid in "abcd":
        out = r.csms_frame(ok(mid), 2.0)
        order += [e.text for e in out if isinstance(e, ToCsms)]
    assert order == [hb("b"), hb("c"), hb("d")]


@DIALECTS
def test_charger_calls_beyond_the_queue_bound_get_generic_error(dialect: Dialect) -> None:
    """B24: beyond max_queued_calls waiting calls, the charger gets CALLERROR GenericError."""
    r = router(dialect, max_queued_calls=2)
    r.charger_frame(hb("a"), 0.0)
    r.charger_frame(hb("b"), 0.0)
    r.charger_frame(hb("c"), 0.0)
    effects = r.charger_frame(hb("d"), 0.0)
    error = only_error(effects, ToCharger)
    assert error[:3] == [4, "d", "GenericError"]
    assert notes(effects) == ["charger_calls_overflow"]
    # the refused call is not forwarded later either
    ups = [e for mid in "abc" for e in r.csms_frame(ok(mid), 1.0) if isinstance(e, ToCsms)]
    assert ups == [ToCsms(hb("b")), ToCsms(hb("c"))]


def test_no_queue_at_all_when_max_queued_calls_is_zero() -> None:
    """With max_queued_calls=0 a second call while one is open is refused at once."""
    r = router(max_queued_calls=0)
    r.charger_frame(hb("a"), 0.0)
    assert only_error(r.charger_frame(hb("b"), 0.0), ToCharger)[:3] == [4, "b", "GenericError"]


def test_second_csms_call_is_queued_until_the_charger_answers() -> None:
    """R10 downwards: a second CSMS call waits until the charger answers the first."""
    r = router()
    first = frames.call("c1", "Reset", {"type": "Soft"})
    second = frames.call("c2", "ClearCache", {})
    assert r.csms_frame(first, 0.0) == [ToCharger(first)]
    queued = r.csms_frame(second, 1.0)
    assert sent(queued) == []
    assert notes(queued) == ["call_to_charger_queued"]
    assert r.charger_frame(ok("c1"), 2.0) == [ToCsms(ok("c1")), ToCharger(second)]
    assert r.charger_frame(ok("c2"), 3.0) == [ToCsms(ok("c2"))]


@DIALECTS
def test_csms_calls_beyond_the_queue_bound_get_generic_error_upstream(dialect: Dialect) -> None:
    """B24 downwards: beyond the bound, the CSMS (not the charger) gets CALLERROR GenericError."""
    r = router(dialect, max_queued_calls=1)
    r.csms_frame(frames.call("c1", "ClearCache", {}), 0.0)
    r.csms_frame(frames.call("c2", "ClearCache", {}), 0.0)
    effects = r.csms_frame(frames.call("c3", "ClearCache", {}), 0.0)
    assert only_error(effects, ToCsms)[:3] == [4, "c3", "GenericError"]
    assert notes(effects) == ["csms_calls_overflow"]


# -- duplicate ids and retries (B6) --------------------------------------------------


def test_retry_of_the_open_call_is_not_forwarded_twice() -> None:
    """B6: the same id and text while the call is open is a retry: noted, not forwarded."""
    r = router()
    r.charger_frame(hb("a"), 0.0)
    effects = r.charger_frame(hb("a"), 1.0)
    assert sent(effects) == []
    assert notes(effects) == ["charger_retry_pending"]
    # the CSMS answer reaches the charger once, and nothing more goes up
    assert r.csms_frame(ok("a"), 2.0) == [ToCharger(ok("a"))]


def test_retry_of_a_queued_call_is_not_queued_twice() -> None:
    """B6: a retry of a call still waiting in the queue is noted, and sent up only once."""
    r = router()
    r.charger_frame(hb("a"), 0.0)
    r.charger_frame(hb("b"), 0.0)
    assert sent(r.charger_frame(hb("b"), 1.0)) == []
    assert r.csms_frame(ok("a"), 2.0) == [ToCharger(ok("a")), ToCsms(hb("b"))]
    assert r.csms_frame(ok("b"), 3.0) == [ToCharger(ok("b"))]


@DIALECTS
@pytest.mark.parametrize("queued", [False, True], ids=["in-flight", "queued"])
def test_same_id_with_another_payload_gets_protocol_error(dialect: Dialect, queued: bool) -> None:
    """B6: the same id with another payload while the first is open gets ProtocolError."""
    r = router(dialect)
    r.charger_frame(hb("a"), 0.0)
    if queued:
        r.charger_frame(hb("b"), 0.0)
    mid = "b" if queued else "a"
    conflicting = frames.call(mid, "StatusNotification", {"connectorId": 1})
    effects = r.charger_frame(conflicting, 1.0)
    assert only_error(effects, ToCharger)[:3] == [4, mid, "ProtocolError"]
    assert notes(effects) == ["charger_duplicate_id"]


def test_retry_after_the_answer_gets_the_cached_answer() -> None:
    """B6: a retry of the last answered call gets the CSMS's answer again, not a second upload."""
    r = router()
    r.charger_frame(hb("a"), 0.0)
    answer = '[3,"a",{"currentTime":"2025-01-01T00:00:00Z"}]'
    r.csms_frame(answer, 1.0)
    effects = r.charger_frame(hb("a"), 2.0)
    assert sent(effects) == [ToCharger(answer)]
    assert notes(effects) == ["charger_retry_answered"]


def test_retry_after_a_callerror_gets_the_same_callerror() -> None:
    """B6: the cached answer may be a CALLERROR; a retry gets it verbatim."""
    r = router()
    r.charger_frame(hb("a"), 0.0)
    answer = frames.error("a", "InternalError", "try later")
    r.csms_frame(answer, 1.0)
    assert sent(r.charger_frame(hb("a"), 2.0)) == [ToCharger(answer)]


def test_retry_answer_is_cached_even_while_another_call_is_open() -> None:
    """B6: the cached answer is given at once, even with a later call awaiting the CSMS."""
    r = router()
    r.charger_frame(hb("a"), 0.0)
    r.csms_frame(ok("a"), 1.0)
    r.charger_frame(hb("b"), 2.0)
    assert sent(r.charger_frame(hb("a"), 3.0)) == [ToCharger(ok("a"))]


def test_new_call_after_an_answer_is_forwarded() -> None:
    """The cache answers retries only: another id after an answer goes to the CSMS."""
    r = router()
    r.charger_frame(hb("a"), 0.0)
    r.csms_frame(ok("a"), 1.0)
    assert r.charger_frame(hb("b"), 2.0) == [ToCsms(hb("b"))]


# -- unknown actions (B7) and unknown answers (B8) -----------------------------------


@DIALECTS
def test_unknown_charger_action_gets_not_implemented_and_is_not_forwarded(
    dialect: Dialect,
) -> None:
    """B7: an unknown action gets CALLERROR NotImplemented with the id; nothing goes up."""
    r = router(dialect)
    effects = r.charger_frame('[2,"a","FooBar",{}]', 0.0)
    error = only_error(effects, ToCharger)
    assert error[:3] == [4, "a", "NotImplemented"]
    assert error[4] == {}
    assert notes(effects) == ["charger_unknown_action"]
    # nothing is left open: the next call goes straight up
    assert r.charger_frame(hb("b"), 1.0) == [ToCsms(hb("b"))]


@pytest.mark.parametrize(
    "action",
    ["DataTransfer", "SignCertificate", "SecurityEventNotification", "LogStatusNotification"],
)
def test_security_whitepaper_and_data_transfer_actions_are_known_on_16(action: str) -> None:
    """B7: the 1.6 known list includes DataTransfer and the security-whitepaper actions."""
    text = frames.call("a", action, {})
    assert router(D16).charger_frame(text, 0.0) == [ToCsms(text)]


@pytest.mark.parametrize(
    "answer", ['[3,"zzz",{}]', '[4,"zzz","GenericError","",{}]'], ids=["result", "error"]
)
def test_charger_answer_with_unknown_id_is_only_noted(answer: str) -> None:
    """B8: a charger answer matching no open call is logged and discarded, never forwarded."""
    r = router()
    assert sent(r.charger_frame(answer, 0.0)) == []
    r.csms_frame(frames.call("c1", "ClearCache", {}), 0.0)
    effects = r.charger_frame(answer, 1.0)
    assert sent(effects) == []
    assert notes(effects) == ["charger_unexpected_answer"]
    # the open call still gets its real answer through
    assert r.charger_frame(ok("c1"), 2.0) == [ToCsms(ok("c1"))]


@pytest.mark.parametrize(
    "answer", ['[3,"zzz",{}]', '[4,"zzz","GenericError","",{}]'], ids=["result", "error"]
)
def test_csms_answer_with_unknown_id_is_only_noted(answer: str) -> None:
    """B8: a CSMS answer matching no open charger call is logged and discarded."""
    r = router()
    assert sent(r.csms_frame(answer, 0.0)) == []
    r.charger_frame(hb("a"), 0.0)
    effects = r.csms_frame(answer, 1.0)
    assert sent(effects) == []
    assert notes(effects) == ["csms_unexpected_answer"]
    assert r.csms_frame(ok("a"), 2.0) == [ToCharger(ok("a"))]


# -- bad frames (B1-B5, B13) and unknown message types (B3, R9) -----------------------

BAD_CHARGER_FRAMES = [
    # (frame, id in the CALLERROR, code on 1.6, code on 2.0.1)
    ('[2,"a1","Heartbeat",{]', "-1", "FormationViolation", "RpcFrameworkError"),
    ('{"a":1}', "-1", "FormationViolation", "RpcFrameworkError"),
    ("42", "-1", "FormationViolation", "RpcFrameworkError"),
    ("null", "-1", "FormationViolation", "RpcFrameworkError"),
    ("[]", "-1", "FormationViolation", "RpcFrameworkError"),
    ('["2","a","Heartbeat",{}]', "a", "ProtocolError", "RpcFrameworkError"),
    ('[2,"a","Heartbeat"]', "a", "ProtocolError", "RpcFrameworkError"),
    ('[2,7,"Heartbeat",{}]', "-1", "FormationViolation", "RpcFrameworkError"),
    ('[2,"","Heartbeat",{}]', "-1", "FormationViolation", "RpcFrameworkError"),
    ('[2,"' + "x" * 37 + '","Heartbeat",{}]', "-1", "FormationViolation", "RpcFrameworkError"),
    (b"\x00\x01", "-1", "FormationViolation", "RpcFrameworkError"),
]


@pytest.mark.parametrize(("text", "message_id", "code16", "code201"), BAD_CHARGER_FRAMES)
@DIALECTS
def test_bad_charger_frame_gets_the_dialect_callerror(
    dialect: Dialect, text: str | bytes, message_id: str, code16: str, code201: str
) -> None:
    """B1-B5, B13: a bad charger frame gets the version's CALLERROR, and nothing goes up."""
    r = router(dialect)
    effects = r.charger_frame(text, 0.0)
    error = only_error(effects, ToCharger)
    code = code16 if dialect is D16 else code201
    assert error[:3] == [4, message_id, code]
    assert isinstance(error[3], str) and error[4] == {}
    raw = text if isinstance(text, str) else text.decode("latin-1")
    assert raw not in sent(effects)[0].text  # R12: the invalid frame is not embedded
    assert notes(effects) == ["charger_bad_frame"]


@pytest.mark.parametrize(("text", "message_id", "code16", "code201"), BAD_CHARGER_FRAMES)
@DIALECTS
def test_bad_csms_frame_is_answered_to_the_csms(
    dialect: Dialect, text: str | bytes, message_id: str, code16: str, code201: str
) -> None:
    """A bad frame from the CSMS gets the CALLERROR on the uplink; the charger sees nothing."""
    r = router(dialect)
    effects = r.csms_frame(text, 0.0)
    error = only_error(effects, ToCsms)
    assert error[:3] == [4, message_id, code16 if dialect is D16 else code201]
    assert notes(effects) == ["csms_bad_frame"]


@pytest.mark.parametrize("side", ["charger", "csms"])
def test_unknown_message_type_on_16_gets_no_reply(side: str) -> None:
    """B3/R9 1.6: a message with an unknown type id is ignored: noted, no reply either way."""
    r = router(D16)
    feed = r.charger_frame if side == "charger" else r.csms_frame
    for text in ('[5,"a","Heartbeat",{}]', '[1,"b",{}]', "[9]"):
        effects = feed(text, 0.0)
        assert sent(effects) == []
        assert notes(effects) == [f"{side}_bad_frame"]
        assert effects[0].fields["kind"] == "unknown_type"


@pytest.mark.parametrize(
    ("side", "target"), [("charger", ToCharger), ("csms", ToCsms)], ids=["charger", "csms"]
)
def test_unknown_message_type_on_201_gets_message_type_not_supported(
    side: str, target: type[ToCharger] | type[ToCsms]
) -> None:
    """B3/R9 2.0.1: an unknown type id gets MessageTypeNotSupported with the id echoed."""
    r = router(D201)
    feed = r.charger_frame if side == "charger" else r.csms_frame
    error = only_error(feed('[5,"a7","Heartbeat",{}]', 0.0), target)
    assert error[:3] == [4, "a7", "MessageTypeNotSupported"]
    assert only_error(feed("[9]", 0.0), target)[:3] == [4, "-1", "MessageTypeNotSupported"]


def test_bad_frame_leaves_the_open_call_open() -> None:
    """A bad frame from either side does not disturb the calls in flight."""
    r = router()
    r.charger_frame(hb("a"), 0.0)
    r.charger_frame("garbage", 1.0)
    r.csms_frame("garbage", 1.0)
    assert r.csms_frame(ok("a"), 2.0) == [ToCharger(ok("a"))]


@DIALECTS
def test_refusal_with_an_escaped_lone_surrogate_id_is_sendable(dialect: Dialect) -> None:
    """A frame whose id is an escaped lone surrogate (valid UTF-8 on the wire) gets an answer.

    The router must not raise; whatever it sends must be encodable text that parses.
    """
    for text in ('[2,"\\ud800","FooBar",{}]', '[2,"a","\\udc00",{}]', '[5,"\\ud800"]'):
        r = router(dialect)
        effects = r.charger_frame(text, 0.0)
        for effect in sent(effects):
            assert isinstance(effect, ToCharger)
            effect.text.encode("utf-8")
            assert isinstance(frames.parse(effect.text), CallError)


# -- timeouts (the ``now`` argument) -------------------------------------------------


def test_charger_call_past_the_timeout_is_answered_locally_and_the_uplink_dropped() -> None:
    """F3: past call_timeout the charger's call is answered locally (OFFLINE) and the
    session is told to open a new uplink; a later call is answered locally as well."""
    r = router()
    r.charger_frame(hb("a"), 100.0)
    assert r.expire(100.0 + TIMEOUT) == []  # exactly at the limit the call is still open
    effects = r.expire(100.0 + TIMEOUT + 0.001)
    assert notes(effects) == ["csms_answer_timed_out"]
    assert sent(effects) == [Answer(frames.parse(hb("a"))), Unresponsive("Heartbeat")]  # type: ignore[arg-type]
    assert r.state is State.OFFLINE
    assert sent(r.charger_frame(hb("b"), 200.0)) == [Answer(frames.parse(hb("b")))]  # type: ignore[arg-type]
    # a late answer to the given-up call reaches nobody
    assert sent(r.csms_frame(ok("a"), 200.0)) == []


def test_the_next_frame_also_gives_up_a_stale_call() -> None:
    """Without the timer, the next frame from the charger finds the stale call."""
    r = router()
    r.charger_frame(hb("a"), 0.0)
    effects = r.charger_frame(hb("b"), TIMEOUT + 1.0)
    assert [type(e) for e in sent(effects)] == [Answer, Unresponsive, Answer]
    assert [e.call.id for e in effects if isinstance(e, Answer)] == ["a", "b"]


def test_timeout_is_measured_from_when_the_call_went_up() -> None:
    """A queued call's clock starts when it is sent, not when it arrived."""
    r = router()
    r.charger_frame(hb("a"), 0.0)
    r.charger_frame(hb("b"), 1.0)
    r.csms_frame(ok("a"), 25.0)  # b goes up at 25
    assert r.expire(50.0) == []  # 25 s after b went up: still open
    assert r.state is State.ONLINE


def test_queued_charger_calls_are_answered_in_order_when_the_open_one_times_out() -> None:
    """The open call and those waiting behind it are answered locally in arrival order,
    so that transaction messages are stored (and replayed) in the order they were sent."""
    r = router()
    r.charger_frame(hb("a"), 0.0)
    r.charger_frame(hb("b"), 1.0)
    r.charger_frame(hb("c"), 2.0)
    effects = r.expire(TIMEOUT + 1.0)
    assert [e.call.id for e in effects if isinstance(e, Answer)] == ["a", "b", "c"]
    assert [e for e in effects if isinstance(e, ToCsms)] == []


def test_replayed_call_past_the_timeout_frees_the_slot_only() -> None:
    """A call of the controller's own that times out frees the slot; the router stays ONLINE."""
    r = router()
    replayed = frames.parse(frames.call("r1", "MeterValues", {"connectorId": 1}))
    assert isinstance(replayed, Call)
    r.replay_call(replayed, 0.0)
    r.charger_frame(hb("a"), 1.0)
    effects = r.expire(TIMEOUT + 0.5)
    assert notes(effects) == ["csms_answer_timed_out"]
    assert sent(effects) == [ToCsms(hb("a"))]
    assert r.state is State.ONLINE


def start(mid: str, meter: int = 100) -> str:
    payload = {
        "connectorId": 1,
        "idTag": "TAG1",
        "meterStart": meter,
        "timestamp": "2026-12-01T10:00:00Z",
    }
    return frames.call(mid, "StartTransaction", payload)


def test_retry_under_a_new_id_of_the_open_transaction_call_is_not_forwarded() -> None:
    """F3: a StartTransaction retried under a new id while the first is with the CSMS
    is not sent again; the CSMS's answer goes to both ids."""
    r = router()
    assert sent(r.charger_frame(start("s1"), 0.0)) == [ToCsms(start("s1"))]
    assert sent(r.charger_frame(start("s2"), 1.0)) == []
    answer = ok("s1", {"transactionId": 7, "idTagInfo": {"status": "Accepted"}})
    effects = r.csms_frame(answer, 2.0)
    assert effects == [
        ToCharger(answer),
        ToCharger(ok("s2", {"transactionId": 7, "idTagInfo": {"status": "Accepted"}})),
    ]


def test_retry_under_a_new_id_after_the_answer_gets_the_same_answer() -> None:
    r = router()
    r.charger_frame(start("s1"), 0.0)
    r.csms_frame(ok("s1", {"transactionId": 7, "idTagInfo": {"status": "Accepted"}}), 1.0)
    effects = r.charger_frame(start("s2"), 2.0)
    assert sent(effects) == [
        ToCharger(ok("s2", {"transactionId": 7, "idTagInfo": {"status": "Accepted"}}))
    ]


def test_another_transaction_message_with_a_new_id_is_forwarded() -> None:
    """Only the same content is a retry: another meterStart is a new start."""
    r = router()
    r.charger_frame(start("s1"), 0.0)
    r.csms_frame(ok("s1", {"transactionId": 7, "idTagInfo": {"status": "Accepted"}}), 1.0)
    assert sent(r.charger_frame(start("s2", meter=200), 2.0)) == [ToCsms(start("s2", meter=200))]


def test_heartbeats_with_new_ids_are_not_retries() -> None:
    """Content matching is for transaction messages: a second Heartbeat goes up."""
    r = router()
    r.charger_frame(hb("a"), 0.0)
    r.csms_frame(ok("a"), 1.0)
    assert sent(r.charger_frame(hb("b"), 2.0)) == [ToCsms(hb("b"))]


def test_retry_of_an_open_call_is_answered_locally_with_it_when_the_uplink_goes() -> None:
    r = router()
    r.charger_frame(start("s1"), 0.0)
    r.charger_frame(start("s2"), 1.0)
    effects = r.uplink_lost(2.0)
    assert [e.call.id for e in effects if isinstance(e, Answer)] == ["s1", "s2"]


def test_stale_call_to_the_charger_is_dropped_and_the_next_goes_down() -> None:
    """After call_timeout without a charger answer, the next CSMS call goes down."""
    r = router()
    r.csms_frame(frames.call("c1", "ClearCache", {}), 0.0)
    assert sent(r.csms_frame(frames.call("c2", "ClearCache", {}), TIMEOUT)) == []
    r2 = router()
    r2.csms_frame(frames.call("c1", "ClearCache", {}), 0.0)
    c2 = frames.call("c2", "ClearCache", {})
    assert sent(r2.csms_frame(c2, TIMEOUT + 0.001)) == [ToCharger(c2)]
    assert sent(r2.charger_frame(ok("c1"), 40.0)) == []
    assert r2.charger_frame(ok("c2"), 40.0) == [ToCsms(ok("c2"))]


def test_queued_csms_calls_keep_their_order_when_the_open_one_times_out() -> None:
    """CSMS calls reach the charger in arrival order even when the open one timed out."""
    r = router()
    calls = {mid: frames.call(mid, "ClearCache", {}) for mid in ("c1", "c2", "c3")}
    r.csms_frame(calls["c1"], 0.0)
    r.csms_frame(calls["c2"], 1.0)
    downs = [e.text for e in r.csms_frame(calls["c3"], TIMEOUT + 1.0) if isinstance(e, ToCharger)]
    for mid in ("c2", "c3"):
        downs += [
            e.text for e in r.charger_frame(ok(mid), TIMEOUT + 2.0) if isinstance(e, ToCharger)
        ]
    assert downs == [calls["c2"], calls["c3"]]


# -- the controller's own calls ------------------------------------------------------


def test_own_call_goes_to_the_charger_with_a_prefixed_id() -> None:
    """own_call() sends a CALL whose id starts with OWN_ID_PREFIX and fits in 36 characters."""
    r = router()
    effects = r.own_call("GetConfiguration", {"key": ["HeartbeatInterval"]}, 0.0)
    assert len(effects) == 1 and isinstance(effects[0], ToCharger)
    call = frames.parse(effects[0].text)
    assert isinstance(call, Call)
    assert call.id.startswith(OWN_ID_PREFIX)
    assert len(call.id) <= frames.MAX_ID_LENGTH
    assert (call.action, call.payload) == ("GetConfiguration", {"key": ["HeartbeatInterval"]})


def test_own_call_ids_are_unique() -> None:
    """Every own call gets a fresh id (R11)."""
    r = router()
    ids = set()
    for i in range(50):
        (effect,) = sent(r.own_call("ClearCache", {}, float(i) * 100))
        assert isinstance(effect, ToCharger)
        ids.add(frames.parse(effect.text).id)
    assert len(ids) == 50


@pytest.mark.parametrize(
    "answer", ['[3,"{id}",{{"status":"Accepted"}}]', '[4,"{id}","NotSupported","",{{}}]']
)
def test_own_call_answer_is_consumed_not_forwarded(answer: str) -> None:
    """The charger's answer to an own call is an OwnResult, never sent to the CSMS."""
    r = router(watched_actions=frozenset({"ClearCache"}))
    (down,) = r.own_call("ClearCache", {}, 0.0)
    call = frames.parse(down.text)
    text = answer.format(id=call.id)
    effects = r.charger_frame(text, 1.0)
    assert effects == [OwnResult(call, frames.parse(text))]


def test_own_calls_wait_behind_a_csms_call() -> None:
    """An own call while a CSMS call is open waits; it goes down after the charger answers."""
    r = router()
    r.csms_frame(frames.call("c1", "ClearCache", {}), 0.0)
    queued = r.own_call("GetConfiguration", {}, 1.0)
    assert sent(queued) == []
    effects = r.charger_frame(ok("c1"), 2.0)
    assert effects[0] == ToCsms(ok("c1"))
    assert isinstance(effects[1], ToCharger)
    assert frames.parse(effects[1].text).id.startswith(OWN_ID_PREFIX)


def test_own_call_beyond_the_queue_bound_is_dropped_silently() -> None:
    """An own call beyond the bound is dropped with a Note; no CALLERROR goes anywhere."""
    r = router(max_queued_calls=1)
    r.csms_frame(frames.call("c1", "ClearCache", {}), 0.0)
    r.own_call("ClearCache", {}, 0.0)
    effects = r.own_call("ClearCache", {}, 0.0)
    assert sent(effects) == []
    assert notes(effects) == ["own_call_dropped"]


# -- exchanges of watched actions ----------------------------------------------------


def test_watched_charger_call_yields_an_exchange() -> None:
    """A watched charger call and its CSMS answer come out as an Exchange after the relay."""
    r = router(watched_actions=frozenset({"Authorize"}))
    call_text = frames.call("a", "Authorize", {"idTag": "T1"})
    r.charger_frame(call_text, 0.0)
    answer = frames.result("a", {"idTagInfo": {"status": "Accepted"}})
    effects = r.csms_frame(answer, 1.0)
    assert effects == [
        ToCharger(answer),
        Exchange(Origin.CHARGER, frames.parse(call_text), frames.parse(answer)),
    ]


def test_watched_csms_call_yields_an_exchange() -> None:
    """A watched CSMS call and the charger's answer come out as an Exchange after the relay."""
    r = router(watched_actions=frozenset({"SendLocalList"}))
    call_text = frames.call("c", "SendLocalList", {"listVersion": 2, "updateType": "Full"})
    r.csms_frame(call_text, 0.0)
    answer = frames.error("c", "NotSupported")
    effects = r.charger_frame(answer, 1.0)
    assert effects == [
        ToCsms(answer),
        Exchange(Origin.CSMS, frames.parse(call_text), frames.parse(answer)),
    ]


def test_unwatched_actions_yield_no_exchange() -> None:
    """Calls whose action is not watched are relayed without an Exchange."""
    r = router(watched_actions=frozenset({"Authorize"}))
    r.charger_frame(hb("a"), 0.0)
    assert r.csms_frame(ok("a"), 1.0) == [ToCharger(ok("a"))]
    r.csms_frame(frames.call("c", "ClearCache", {}), 2.0)
    assert r.charger_frame(ok("c"), 3.0) == [ToCsms(ok("c"))]


# -- uplink state --------------------------------------------------------------------


def test_router_starts_online_by_default() -> None:
    """A new router is ONLINE unless told otherwise."""
    assert router().state is State.ONLINE
    assert router(state=State.OFFLINE).state is State.OFFLINE


def test_uplink_lost_turns_open_charger_calls_into_answers_in_order() -> None:
    """The in-flight and the queued charger calls become Answer effects, in arrival order."""
    r = router()
    for mid in "abc":
        r.charger_frame(hb(mid), 0.0)
    effects = r.uplink_lost()
    assert r.state is State.OFFLINE
    assert effects == [Answer(frames.parse(hb(mid))) for mid in "abc"]
    assert r.uplink_lost() == []  # nothing left to answer


def test_uplink_lost_drops_csms_calls_to_the_charger() -> None:
    """CSMS calls in flight or queued are dropped; the charger's late answer goes nowhere."""
    r = router()
    r.csms_frame(frames.call("c1", "ClearCache", {}), 0.0)
    r.csms_frame(frames.call("c2", "ClearCache", {}), 0.0)
    assert r.uplink_lost() == []
    assert sent(r.charger_frame(ok("c1"), 1.0)) == []
    # c2 was dropped: a later own call goes straight down
    (down,) = r.own_call("ClearCache", {}, 2.0)
    assert isinstance(down, ToCharger)
    assert frames.parse(down.text).id.startswith(OWN_ID_PREFIX)


def test_own_call_in_flight_survives_uplink_lost() -> None:
    """An own call open when the uplink drops still gets its OwnResult."""
    r = router()
    (down,) = r.own_call("GetConfiguration", {}, 0.0)
    call = frames.parse(down.text)
    r.uplink_lost()
    answer = frames.result(call.id, {"configurationKey": []})
    assert r.charger_frame(answer, 1.0) == [OwnResult(call, frames.parse(answer))]


def test_queued_own_call_is_sent_first_after_uplink_lost_drops_the_csms_call() -> None:
    """An own call queued behind a dropped CSMS call reaches the charger before later ones."""
    r = router()
    r.csms_frame(frames.call("c1", "ClearCache", {}), 0.0)
    (queued_note,) = r.own_call("GetConfiguration", {"key": ["first"]}, 1.0)
    assert isinstance(queued_note, Note)
    downs = [e for e in r.uplink_lost() if isinstance(e, ToCharger)]
    downs += [e for e in r.own_call("GetConfiguration", {"key": ["second"]}, 2.0)]
    downs = [e for e in downs if isinstance(e, ToCharger)]
    assert downs, "the queued own call was never sent"
    assert frames.parse(downs[0].text).payload == {"key": ["first"]}


@DIALECTS
def test_charger_calls_while_offline_are_answers(dialect: Dialect) -> None:
    """OFFLINE: every charger call becomes an Answer effect, nothing goes up, nothing queues."""
    r = router(dialect)
    r.uplink_lost()
    for mid in "ab":
        assert r.charger_frame(hb(mid), 0.0) == [Answer(frames.parse(hb(mid)))]


def test_unknown_action_while_offline_is_still_refused() -> None:
    """OFFLINE: an unknown action still gets NotImplemented, not an Answer."""
    r = router(state=State.OFFLINE)
    assert only_error(r.charger_frame('[2,"a","FooBar",{}]', 0.0), ToCharger)[2] == (
        "NotImplemented"
    )


def test_charger_answer_to_a_csms_call_while_offline_is_dropped() -> None:
    """OFFLINE: the answer to a CSMS call that still came down is not sent to the CSMS."""
    r = router(state=State.OFFLINE)
    r.csms_frame(frames.call("c1", "ClearCache", {}), 0.0)
    effects = r.charger_frame(ok("c1"), 1.0)
    assert sent(effects) == []
    assert notes(effects) == ["csms_call_answer_dropped"]


def test_uplink_back_draining_then_drained() -> None:
    """DRAINING: stored actions are answered locally, others go up; drained() is ONLINE."""
    r = router()
    r.uplink_lost()
    assert r.uplink_back(draining=True) is None
    assert r.state is State.DRAINING
    status = frames.call("s1", "StatusNotification", {"connectorId": 1, "status": "Available"})
    assert "StatusNotification" in D16.stored_actions
    assert r.charger_frame(status, 0.0) == [Answer(frames.parse(status))]
    assert r.charger_frame(hb("a"), 0.0) == [ToCsms(hb("a"))]
    r.csms_frame(ok("a"), 0.5)
    r.drained()
    assert r.state is State.ONLINE
    status2 = frames.call("s2", "StatusNotification", {"connectorId": 1, "status": "Charging"})
    assert r.charger_frame(status2, 1.0) == [ToCsms(status2)]


def test_stored_action_while_draining_and_busy_is_answered_not_queued() -> None:
    """DRAINING with a call open: a stored action is answered at once, others wait in order."""
    r = router(state=State.DRAINING)
    replayed = frames.parse(frames.call("r1", "StartTransaction", {"connectorId": 1}))
    assert r.replay_call(replayed, 0.0) == [ToCsms(replayed.raw)]
    status = frames.call("s1", "StatusNotification", {"connectorId": 1, "status": "Available"})
    assert r.charger_frame(status, 1.0) == [Answer(frames.parse(status))]
    assert notes(r.charger_frame(hb("h1"), 1.0)) == ["charger_call_queued"]
    answer = frames.result("r1", {"transactionId": 7, "idTagInfo": {"status": "Accepted"}})
    assert r.csms_frame(answer, 2.0) == [
        ReplayResult(replayed, frames.parse(answer)),
        ToCsms(hb("h1")),
    ]


def test_uplink_back_without_draining_is_online() -> None:
    """uplink_back(draining=False) goes straight to ONLINE: calls go up again."""
    r = router()
    r.uplink_lost()
    r.uplink_back(draining=False)
    assert r.state is State.ONLINE
    assert r.charger_frame(hb("a"), 0.0) == [ToCsms(hb("a"))]


def test_csms_call_while_draining_is_relayed_and_answered() -> None:
    """DRAINING: the CSMS may call the charger; the answer goes back up."""
    r = router()
    r.uplink_lost()
    r.uplink_back(draining=True)
    assert r.csms_frame(frames.call("c1", "ClearCache", {}), 0.0) == [
        ToCharger(frames.call("c1", "ClearCache", {}))
    ]
    assert r.charger_frame(ok("c1"), 1.0) == [ToCsms(ok("c1"))]


# -- calls the controller sends upstream (replay of stored messages) -----------------


def stored(mid: str, action: str = "StopTransaction") -> Call:
    """A stored charger call as the replay hands it to the router."""
    return frames.parse(frames.call(mid, action, {"transactionId": 5, "meterStop": 10}))


def test_replay_call_goes_up_and_its_answer_is_a_replay_result() -> None:
    """replay_call() sends the stored text up; the CSMS answer is consumed, not relayed."""
    r = router()
    call = stored("r1")
    assert r.replay_call(call, 0.0) == [ToCsms(call.raw)]
    answer = frames.result("r1", {"idTagInfo": {"status": "Accepted"}})
    assert r.csms_frame(answer, 1.0) == [ReplayResult(call, frames.parse(answer))]


def test_replay_call_waits_for_the_open_charger_call() -> None:
    """R10: a replayed call waits while a charger call is open, then goes up next."""
    r = router()
    r.charger_frame(hb("a"), 0.0)
    call = stored("r1")
    assert r.replay_call(call, 1.0) == []
    assert r.csms_frame(ok("a"), 2.0) == [ToCharger(ok("a")), ToCsms(call.raw)]


def test_replay_call_after_a_stale_call_is_not_sent() -> None:
    """A replayed call finding a charger call open past call_timeout does not go up:
    the stale call is answered locally and the uplink is to be dropped."""
    r = router()
    r.charger_frame(hb("a"), 0.0)
    call = stored("r1")
    effects = r.replay_call(call, TIMEOUT + 1.0)
    assert [type(e) for e in sent(effects)] == [Answer, Unresponsive]
    assert r.state is State.OFFLINE


def test_charger_call_waits_behind_a_replayed_call() -> None:
    """R10: a charger call while a replayed call is open waits for its answer."""
    r = router()
    call = stored("r1")
    r.replay_call(call, 0.0)
    assert notes(r.charger_frame(hb("a"), 1.0)) == ["charger_call_queued"]
    effects = r.csms_frame(frames.result("r1", {}), 2.0)
    assert effects == [ReplayResult(call, frames.parse(frames.result("r1", {}))), ToCsms(hb("a"))]


def test_abandon_upstream_frees_the_slot_for_the_next_call() -> None:
    """abandon_upstream() on the open call frees the slot and sends the next waiting call."""
    r = router()
    r.replay_call(stored("r1"), 0.0)
    r.charger_frame(hb("a"), 1.0)
    assert r.abandon_upstream("r1", 5.0) == [ToCsms(hb("a"))]
    assert sent(r.csms_frame(frames.result("r1", {}), 6.0)) == []  # late answer: discarded
    assert r.csms_frame(ok("a"), 6.0) == [ToCharger(ok("a"))]


def test_abandon_upstream_of_a_waiting_call_removes_it() -> None:
    """abandon_upstream() on a waiting call removes it; the others keep their order."""
    r = router()
    r.charger_frame(hb("a"), 0.0)
    r.replay_call(stored("r1"), 0.0)
    r.charger_frame(hb("b"), 0.0)
    assert r.abandon_upstream("r1", 1.0) == []
    assert r.abandon_upstream("nobody", 1.0) == []
    assert r.csms_frame(ok("a"), 2.0) == [ToCharger(ok("a")), ToCsms(hb("b"))]


def test_abandon_upstream_with_nothing_waiting_sends_nothing() -> None:
    """abandon_upstream() of the only open call leaves the slot empty."""
    r = router()
    r.replay_call(stored("r1"), 0.0)
    assert r.abandon_upstream("r1", 1.0) == []
    assert r.charger_frame(hb("a"), 1.0) == [ToCsms(hb("a"))]


def test_uplink_lost_drops_replayed_calls_without_answers() -> None:
    """Replayed calls open or waiting when the uplink drops are not Answer effects."""
    r = router()
    r.replay_call(stored("r1"), 0.0)
    r.charger_frame(hb("a"), 0.0)
    r.replay_call(stored("r2"), 0.0)
    assert r.uplink_lost() == [Answer(frames.parse(hb("a")))]
    assert sent(r.csms_frame(frames.result("r1", {}), 1.0)) == []


def test_answer_while_offline_starts_no_further_upstream_call() -> None:
    """OFFLINE: the answer to an open replayed call does not send the next waiting one."""
    r = router(state=State.OFFLINE)
    first, second = stored("r1"), stored("r2")
    assert r.replay_call(first, 0.0) == [ToCsms(first.raw)]
    assert r.replay_call(second, 0.0) == []
    answer = frames.result("r1", {})
    assert r.csms_frame(answer, 1.0) == [ReplayResult(first, frames.parse(answer))]


# -- OCPP 1.6 transaction id rewriting ----------------------------------------------

PROVISIONAL = 2_000_000_001


def meter_values(mid: str, tx_id: int = PROVISIONAL) -> str:
    """A 1.6 MeterValues CALL naming transaction ``tx_id``."""
    return frames.call(
        mid, "MeterValues", {"connectorId": 1, "transactionId": tx_id, "meterValue": []}
    )


def test_transaction_call_goes_up_with_the_csms_id() -> None:
    """R41: a charger transaction call naming a provisional id goes up with the CSMS's id."""
    r = router(D16)
    r.tx_up[PROVISIONAL] = 42
    (up,) = r.charger_frame(meter_values("m1"), 0.0)
    assert isinstance(up, ToCsms)
    assert frames.parse(up.text).payload["transactionId"] == 42


def test_non_transaction_call_is_never_rewritten() -> None:
    """Only transaction actions are rewritten; other calls go up verbatim."""
    r = router(D16)
    r.tx_up[PROVISIONAL] = 42
    text = '[2,"d1","DataTransfer",{"vendorId":"v","data":"transactionId 2000000001"}]'
    assert r.charger_frame(text, 0.0) == [ToCsms(text)]


def test_csms_call_goes_down_with_the_provisional_id() -> None:
    """B26: RemoteStopTransaction naming the CSMS's id reaches the charger with its own id."""
    r = router(D16)
    r.tx_down[42] = PROVISIONAL
    (down,) = r.csms_frame(frames.call("c1", "RemoteStopTransaction", {"transactionId": 42}), 0.0)
    assert isinstance(down, ToCharger)
    assert frames.parse(down.text).payload == {"transactionId": PROVISIONAL}


def test_retry_of_a_rewritten_call_in_flight_is_a_retry_not_a_conflict() -> None:
    """B6: the charger's retry (same id, same text) of a rewritten call is not ProtocolError."""
    r = router(D16)
    r.tx_up[PROVISIONAL] = 42
    r.charger_frame(meter_values("m1"), 0.0)
    effects = r.charger_frame(meter_values("m1"), 1.0)
    assert sent(effects) == []
    assert notes(effects) == ["charger_retry_pending"]


def test_retry_of_an_answered_rewritten_call_gets_the_cached_answer() -> None:
    """B6: a retry of an answered rewritten call gets the cached answer, not a second upload."""
    r = router(D16)
    r.tx_up[PROVISIONAL] = 42
    r.charger_frame(meter_values("m1"), 0.0)
    r.csms_frame(frames.result("m1", {}), 1.0)
    assert sent(r.charger_frame(meter_values("m1"), 2.0)) == [ToCharger(frames.result("m1", {}))]


# -- property ------------------------------------------------------------------------

any_char = st.characters() | st.characters(codec=None, categories=["Cs"])
scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(any_char, max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
wire_frames = st.builds(
    lambda head, mid, rest: json.dumps([head, mid, *rest]),  # ensure_ascii: valid UTF-8 text
    st.sampled_from([2, 3, 4, 5]) | scalars,
    st.sampled_from(["a", "b", "lc-1"]) | st.text(any_char, min_size=1, max_size=3) | scalars,
    st.lists(st.sampled_from(["Heartbeat", "MeterValues", "FooBar", "Reset"]) | values, max_size=4),
)
STEPS = ("charger", "csms", "own", "replay", "abandon", "lost", "back", "drained")
steps = st.lists(st.tuples(st.sampled_from(STEPS), wire_frames), max_size=12)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([D16, D201]), steps)
@example(D201, [("charger", '[5,"\\ud800"]')])
@example(D16, [("charger", '[2,"a","\\udc00",{}]')])
def test_router_never_raises_and_sends_only_valid_text(
    dialect: Dialect, script: list[tuple[str, str]]
) -> None:
    """Property: any sequence of wire frames and uplink events yields effects, never an error.

    Every text the router sends is either a frame it received, verbatim, or a frame it
    authored that is valid UTF-8 and parses back.
    """
    r = router(dialect)
    r.tx_up[PROVISIONAL] = 42
    received: set[str] = set()
    for i, (step, text) in enumerate(script):
        now = float(i) * 7.0
        effects: list[Any]
        if step in ("charger", "csms"):
            received.add(text)
            feed = r.charger_frame if step == "charger" else r.csms_frame
            effects = feed(text, now)
        elif step == "own":
            effects = r.own_call("ClearCache", {}, now)
        elif step == "replay":
            effects = r.replay_call(stored(f"r{i}"), now)
        elif step == "abandon":
            effects = r.abandon_upstream(f"r{i - 1}", now)
        elif step == "lost":
            effects = r.uplink_lost()
        elif step == "back":
            r.uplink_back(draining=i % 2 == 0)
            effects = []
        else:
            r.drained()
            effects = []
        for effect in effects:
            assert isinstance(
                effect, ToCsms | ToCharger | Answer | OwnResult | ReplayResult | Exchange | Note
            )
            if isinstance(effect, ToCsms | ToCharger) and effect.text not in received:
                effect.text.encode("utf-8")
                assert isinstance(frames.parse(effect.text), Call | CallResult | CallError)
