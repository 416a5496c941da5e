"""Bad input from chargers, end to end (SCENARIOS.md 15; RELIABILITY.md §5.5, B1-B25).

Every case runs against the real service on loopback with a CSMS peer, and checks
three things: what the misbehaving charger gets (the CALLERROR code of its OCPP
version, silence, or a close code), what reaches the CSMS (nothing, or the frame
verbatim), and that nothing else suffers: a bystander charger's session keeps working
and an outbox message stored for another charger is untouched.

The handshake rows B15-B18 (unknown identity, wrong password, wrong profile, certificate
faults) are in ``test_security.py``; B26 (a CSMS call naming the CSMS's transactionId)
is scenario 13 in ``test_replay.py``. The 1.6 offline cases of B10, B11 and B23 are also
in ``test_offline.py``; here they run for both versions next to a bystander.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from ocpp.v16 import call as call16
from peers import (
    OCPP16,
    OCPP201,
    ChargerPeer16,
    CsmsPeer,
    RawCharger,
    controller_url,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from proxy.store import OutboxItem, OutboxRow

if TYPE_CHECKING:
    from conftest import ControllerFactory

    from proxy.app import Controller

pytestmark = pytest.mark.timeout(30)

VERSIONS = [OCPP16, OCPP201]
#: CALLERROR codes per version (§5.5, R13).
CODES = {
    OCPP16: {
        "malformed": "FormationViolation",
        "envelope": "ProtocolError",
        "bad_id": "FormationViolation",
        "missing": "ProtocolError",
        "type": "TypeConstraintViolation",
        "value": "PropertyConstraintViolation",
    },
    OCPP201: {
        "malformed": "RpcFrameworkError",
        "envelope": "RpcFrameworkError",
        "bad_id": "RpcFrameworkError",
        "missing": "OccurrenceConstraintViolation",
        "type": "TypeConstraintViolation",
        "value": "PropertyConstraintViolation",
    },
}
STAMP = "2025-01-01T12:00:00.000Z"
#: A StartTransaction stored for a charger that is not connected (the untouched outbox).
STORED_FRAME = (
    '[2,"stored-1","StartTransaction",{"connectorId":1,"idTag":"CARD-STORED",'
    f'"meterStart":0,"timestamp":"{STAMP}"}}]'
)


# --------------------------------------------------------------------------- the bench


@dataclass
class Bench:
    """A controller with a bystander charger and a stored outbox message."""

    ctl: Controller
    csms: CsmsPeer
    bystander: ChargerPeer16
    stored: list[OutboxRow]

    @property
    def url(self) -> str:
        return controller_url(self.ctl.listen_port)

    def charger(self, identity: str, version: str = OCPP16, **kw: Any) -> RawCharger:
        return RawCharger(self.url, identity, subprotocols=(version,), **kw)

    def csms_got(self, identity: str) -> list[str | bytes]:
        """The frames the CSMS received from ``identity``, in order."""
        return self.csms.received(identity)

    async def check_unaffected(self) -> None:
        """The bystander's session works, the stored outbox is as it was, the CSMS saw
        no protocol violation and no frame that is not OCPP-J."""
        online = self.csms.running
        before = len(self.csms.received_calls("CP-BYSTANDER", "Heartbeat"))
        await self.bystander.call(call16.Heartbeat())
        if online:
            after = len(self.csms.received_calls("CP-BYSTANDER", "Heartbeat"))
            assert after == before + 1
        assert "CP-BYSTANDER" in self.ctl.chargers.sessions
        assert await self.ctl.store.outbox("CP-STORED") == self.stored
        self.bystander.assert_clean()
        self.csms.assert_clean()


BenchFactory = Callable[..., Awaitable[Bench]]


@pytest.fixture
async def bench_factory(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> AsyncIterator[BenchFactory]:
    """``bench = await bench_factory(csms_down=False, **controller_overrides)``."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(*, csms_down: bool = False, **overrides: Any) -> Bench:
            overrides.setdefault("uplink", {"reconnect_min": 5, "reconnect_jitter": 0})
            ctl = await controller_factory(**overrides)
            await ctl.store.append(
                OutboxItem("CP-STORED", "StartTransaction", "stored-1", STORED_FRAME)
            )
            stored = await ctl.store.outbox("CP-STORED")
            assert len(stored) == 1
            bystander = await stack.enter_async_context(
                ChargerPeer16(controller_url(ctl.listen_port), "CP-BYSTANDER")
            )
            await bystander.boot()
            if csms_down:
                await csms.stop()
                await eventually(
                    lambda: ctl.chargers.sessions["CP-BYSTANDER"].uplink is None,
                    what="the bystander to be offline",
                )
            return Bench(ctl, csms, bystander, stored)

        yield make


@pytest.fixture
async def bench(bench_factory: BenchFactory) -> Bench:
    """An online bench with the test defaults."""
    return await bench_factory()


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> None:
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = predicate()
                if asyncio.iscoroutine(value):
                    value = await value
                if value:
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what or 'a condition'}") from None


async def expect_callerror(
    raw: RawCharger, text: str | bytes, code: str, message_id: str = "-1"
) -> list[Any]:
    """Send ``text``; the next frame must be a well-formed CALLERROR ``code`` for
    ``message_id`` whose description does not embed the frame."""
    await raw.send(text)
    answer = await raw.recv_json()
    assert isinstance(answer, list) and len(answer) == 5, answer
    assert answer[:3] == [4, message_id, code], answer
    assert isinstance(answer[3], str) and answer[4] == {}, answer
    if isinstance(text, str) and len(text) > 3:
        assert text not in answer[3]
    return answer


async def still_served(raw: RawCharger, bench: Bench) -> None:
    """The connection is kept: a Heartbeat is answered (by the CSMS when online)."""
    before = len(bench.csms.received_calls(raw.identity, "Heartbeat"))
    answer = await raw.call("Heartbeat", {})
    assert answer[0] == 3 and "currentTime" in answer[2], answer
    if bench.csms.running:
        assert len(bench.csms.received_calls(raw.identity, "Heartbeat")) == before + 1


def heartbeat_only(frames: list[str | bytes]) -> bool:
    """Whether the CSMS got nothing from the charger but Heartbeats."""
    return all(json.loads(f)[2] == "Heartbeat" for f in frames if json.loads(f)[0] == 2)


# --------------------------------------------------------------------------- B1, B2


MALFORMED = [
    '[2,"a1","Heartbeat",{]',  # B1
    "[2,",
    "not json at all",
    '[2,"a1","Heartbeat",{"x":NaN}]',
    '{"a":1}',  # B2
    "42",
    "null",
    "[]",
    '"text"',
    "true",
]


@pytest.mark.parametrize("version", VERSIONS)
async def test_malformed_or_non_array_json_gets_a_callerror_and_is_kept(
    bench: Bench, version: str
) -> None:
    """B1/B2: invalid JSON or JSON that is not an array: CALLERROR "-1" with the version's
    code (FormationViolation / RpcFrameworkError) and no raw text in the description;
    kept, not forwarded, counted."""
    async with bench.charger("CP-BAD", version) as raw:
        for text in MALFORMED:
            await expect_callerror(raw, text, CODES[version]["malformed"])
        await still_served(raw, bench)
    assert heartbeat_only(bench.csms_got("CP-BAD"))
    assert bench.ctl.metrics.notes["charger_bad_frame"] == len(MALFORMED)
    await bench.check_unaffected()


# --------------------------------------------------------------------------- B3


UNKNOWN_TYPES = ['[1,"b3","Heartbeat",{}]', '[5,"b3",{}]', '[0,"b3"]', '[-2,"b3","Heartbeat",{}]']


async def test_unknown_message_type_on_16_is_ignored(bench: Bench) -> None:
    """B3 on 1.6 (J16 §4.1.3): an unknown message type id gets no reply; kept, counted,
    not forwarded."""
    async with bench.charger("CP-BAD", OCPP16) as raw:
        for text in [*UNKNOWN_TYPES, "[99]"]:
            await raw.send(text)
        await raw.expect_silence(0.3)
        await still_served(raw, bench)
    assert heartbeat_only(bench.csms_got("CP-BAD"))
    assert bench.ctl.metrics.notes["charger_bad_frame"] == len(UNKNOWN_TYPES) + 1
    await bench.check_unaffected()


async def test_unknown_message_type_on_201_gets_message_type_not_supported(
    bench: Bench,
) -> None:
    """B3 on 2.0.1 (P4 §4.4): CALLERROR MessageTypeNotSupported with the id echoed (or
    "-1" when there is none); kept, not forwarded."""
    async with bench.charger("CP-BAD", OCPP201) as raw:
        for text in UNKNOWN_TYPES:
            await expect_callerror(raw, text, "MessageTypeNotSupported", "b3")
        for text in ("[7]", "[6,5]"):
            await expect_callerror(raw, text, "MessageTypeNotSupported", "-1")
        await still_served(raw, bench)
    assert heartbeat_only(bench.csms_got("CP-BAD"))
    await bench.check_unaffected()


# --------------------------------------------------------------------------- B4, B5


BAD_ENVELOPES = [
    ('["2","b4","Heartbeat",{}]', "b4"),  # type id a string
    ('[2.0,"b4","Heartbeat",{}]', "b4"),  # type id a float
    ('[true,"b4","Heartbeat",{}]', "b4"),  # type id a boolean
    ('[null,"b4"]', "b4"),
    ('[2,"b4","Heartbeat"]', "b4"),  # arity
    ('[2,"b4","Heartbeat",{},{}]', "b4"),
    ('[2,"b4",7,{}]', "b4"),  # action not a string
    ('[2,"b4","",{}]', "b4"),  # empty action
    ('[2,"b4","Heartbeat",[]]', "b4"),  # payload not an object
    ('[2,"b4","Heartbeat","{}"]', "b4"),
    ('[{"a":1},"b4"]', "b4"),
    ('[[2],{"id":"b4"}]', "-1"),  # neither type nor id readable
]


@pytest.mark.parametrize("version", VERSIONS)
async def test_bad_envelope_gets_the_versions_callerror(bench: Bench, version: str) -> None:
    """B4: a type id that is not an integer or a wrong arity: ProtocolError (1.6) /
    RpcFrameworkError (2.0.1), the id echoed when it is a string; kept, not forwarded."""
    async with bench.charger("CP-BAD", version) as raw:
        for text, message_id in BAD_ENVELOPES:
            await expect_callerror(raw, text, CODES[version]["envelope"], message_id)
        await still_served(raw, bench)
    assert heartbeat_only(bench.csms_got("CP-BAD"))
    await bench.check_unaffected()


BAD_IDS = [
    '[2,"' + "x" * 37 + '","Heartbeat",{}]',  # over 36 characters
    '[2,5,"Heartbeat",{}]',  # a number
    '[2,"","Heartbeat",{}]',  # empty
    '[2,null,"Heartbeat",{}]',
    '[2,["a"],"Heartbeat",{}]',
]


@pytest.mark.parametrize("version", VERSIONS)
async def test_bad_message_id_gets_the_versions_callerror(bench: Bench, version: str) -> None:
    """B5: a message id over 36 characters, not a string, or empty: FormationViolation
    (1.6) / RpcFrameworkError (2.0.1) with id "-1"; kept, not forwarded."""
    async with bench.charger("CP-BAD", version) as raw:
        for text in BAD_IDS:
            await expect_callerror(raw, text, CODES[version]["bad_id"])
        await still_served(raw, bench)
    assert heartbeat_only(bench.csms_got("CP-BAD"))
    await bench.check_unaffected()


async def test_message_id_of_36_characters_goes_through(bench: Bench) -> None:
    """B5 boundary: a 36-character id is fine and forwarded."""
    mid = "y" * 36
    async with bench.charger("CP-ID") as raw:
        answer = await raw.call("Heartbeat", {}, unique_id=mid)
    assert answer[:2] == [3, mid]
    assert bench.csms.received_calls("CP-ID", "Heartbeat")[0].unique_id == mid
    await bench.check_unaffected()


# --------------------------------------------------------------------------- B6


@pytest.mark.parametrize("version", VERSIONS)
async def test_duplicate_message_id_retry_and_conflict(bench: Bench, version: str) -> None:
    """B6: the same id and payload while the first is open is a retry (not forwarded
    again, one answer); the same id with another payload gets ProtocolError at once;
    after the answer, a retry gets the cached answer; the CSMS sees one call."""
    bench.csms.delay("DataTransfer", 0.6, times=1)
    first = '[2,"dup","DataTransfer",{"vendorId":"V1"}]'
    other = '[2,"dup","DataTransfer",{"vendorId":"V2"}]'
    async with bench.charger("CP-DUP", version) as raw:
        await raw.send(first)
        await raw.send(first)  # the charger's retry
        await raw.send(other)
        conflict = await raw.recv_json()
        assert conflict[:3] == [4, "dup", "ProtocolError"], conflict
        answer = await raw.recv_json(timeout=3)
        assert answer[:2] == [3, "dup"], answer
        await raw.expect_silence(0.3)  # one answer for the pending retry, not two
        await raw.send(first)  # a retry after the answer: the same text comes back
        again = await raw.recv_json()
        assert again == answer
        await still_served(raw, bench)
    calls = bench.csms.received_calls("CP-DUP", "DataTransfer")
    assert [c.request_text for c in calls] == [first]
    assert bench.ctl.metrics.notes["charger_duplicate_id"] == 1
    await bench.check_unaffected()


# --------------------------------------------------------------------------- B7, B8


UNKNOWN_ACTIONS = ["FooBar", "heartbeat", "Heartbeat ", "A" * 300]


@pytest.mark.parametrize("version", VERSIONS)
async def test_unknown_action_gets_not_implemented_and_is_not_forwarded(
    bench: Bench, version: str
) -> None:
    """B7: an action the version does not define: NotImplemented with the id; not
    forwarded; counted."""
    async with bench.charger("CP-BAD", version) as raw:
        for action in UNKNOWN_ACTIONS:
            answer = await expect_callerror(
                raw, json.dumps([2, "b7", action, {}]), "NotImplemented", "b7"
            )
            assert len(answer[3]) < 100  # the description does not carry the whole action
        await still_served(raw, bench)
    assert heartbeat_only(bench.csms_got("CP-BAD"))
    assert bench.ctl.metrics.notes["charger_unknown_action"] == len(UNKNOWN_ACTIONS)
    await bench.check_unaffected()


async def test_whitepaper_actions_and_data_transfer_are_known_on_16(bench: Bench) -> None:
    """B7: the known 1.6 list includes DataTransfer and the security whitepaper actions:
    forwarded, never NotImplemented by the controller."""
    calls = [
        ("DataTransfer", {"vendorId": "V"}),
        ("SecurityEventNotification", {"type": "StartupOfTheDevice", "timestamp": STAMP}),
        ("SignCertificate", {"csr": "-----BEGIN CERTIFICATE REQUEST-----"}),
    ]
    async with bench.charger("CP-SWP") as raw:
        for action, payload in calls:
            await raw.call(action, payload)
    assert [c.action for c in bench.csms.received_calls("CP-SWP")] == [a for a, _ in calls]
    assert bench.ctl.metrics.notes["charger_unknown_action"] == 0
    await bench.check_unaffected()


STRAY_ANSWERS = [
    '[3,"zzz",{}]',
    '[4,"zzz","GenericError","",{}]',
    '[3,"zzz",{"status":"Accepted"}]',
]


@pytest.mark.parametrize("version", VERSIONS)
async def test_answer_with_an_unknown_id_is_discarded(bench: Bench, version: str) -> None:
    """B8: a CALLRESULT/CALLERROR for no open call: no reply, not forwarded, counted."""
    async with bench.charger("CP-ANS", version) as raw:
        for text in STRAY_ANSWERS:
            await raw.send(text)
        await raw.expect_silence(0.3)
        await still_served(raw, bench)
    assert heartbeat_only(bench.csms_got("CP-ANS"))
    assert bench.ctl.metrics.notes["charger_unexpected_answer"] == len(STRAY_ANSWERS)
    await bench.check_unaffected()


# --------------------------------------------------------------------------- B9


SCHEMA_VIOLATIONS = [
    '[2,"b9-1","BootNotification",{"chargePointVendor":"V","chargePointModel":"M",'
    '"vendorExtra":{"x":[1,2]}}]',
    '[2,"b9-2","BootNotification",{"chargePointVendor":"V","chargePointModel":"M",'
    '"chargePointSerialNumber":"' + "S" * 26 + '"}]',
    '[2,"b9-3","MeterValues",{"connectorId":1,"meterValue":[{"timestamp":"' + STAMP + '",'
    '"sampledValue":[]}]}]',
    '[2,"b9-4","Authorize",{"idTag":"' + "T" * 21 + '"}]',  # B11 online: forwarded
    '[2, "b9-5" , "Heartbeat" ,  { } ]',  # odd spacing stays as it was
]


async def test_schema_violation_online_is_forwarded_verbatim(bench: Bench) -> None:
    """B9/B11 online: a frame that breaks the schema is forwarded byte for byte, and the
    CSMS's answer, whatever it is, reaches the charger byte for byte; the controller adds
    no error of its own."""
    answers = []
    async with bench.charger("CP-B9") as raw:
        for text in SCHEMA_VIOLATIONS:
            await raw.send(text)
            answers.append(await raw.recv())
    assert bench.csms_got("CP-B9") == SCHEMA_VIOLATIONS
    assert bench.csms.sent("CP-B9") == answers
    assert bench.ctl.metrics.notes["charger_bad_frame"] == 0
    await bench.check_unaffected()


# --------------------------------------------------------------------------- B10, B11 offline


def b10_cases() -> list[Any]:
    start16 = {"connectorId": 1, "idTag": "CARD", "meterStart": 0, "timestamp": STAMP}
    event = {
        "eventType": "Started",
        "timestamp": STAMP,
        "triggerReason": "Authorized",
        "seqNo": 0,
        "transactionInfo": {"transactionId": "T-B10"},
    }
    no_connector = {k: v for k, v in start16.items() if k != "connectorId"}
    no_event_type = {k: v for k, v in event.items() if k != "eventType"}
    return [
        pytest.param(OCPP16, "StartTransaction", no_connector, "missing", id="16-missing"),
        pytest.param(
            OCPP16, "StartTransaction", dict(start16, connectorId="1"), "type", id="16-type"
        ),
        pytest.param(
            OCPP16,
            "StatusNotification",
            {"connectorId": 1, "errorCode": "NoError", "status": "Sleeping"},
            "value",
            id="16-enum",
        ),
        pytest.param(OCPP201, "TransactionEvent", no_event_type, "missing", id="201-missing"),
        pytest.param(OCPP201, "TransactionEvent", dict(event, seqNo="0"), "type", id="201-type"),
        pytest.param(
            OCPP201,
            "TransactionEvent",
            dict(event, triggerReason="Nope"),
            "value",
            id="201-enum",
        ),
    ]


@pytest.mark.parametrize(("version", "action", "payload", "kind"), b10_cases())
async def test_offline_schema_violation_the_controller_cannot_answer(
    bench_factory: BenchFactory, version: str, action: str, payload: dict[str, Any], kind: str
) -> None:
    """B10 offline: a field the controller needs is missing, mistyped or out of range:
    the version's code (missing ProtocolError / OccurrenceConstraintViolation, type
    TypeConstraintViolation, value PropertyConstraintViolation); nothing stored; kept."""
    bench = await bench_factory(csms_down=True)
    async with bench.charger("CP-B10", version) as raw:
        answer = await raw.call(action, payload)
        assert answer[0] == 4 and answer[2] == CODES[version][kind], answer
        await still_served(raw, bench)
    assert await bench.ctl.store.outbox("CP-B10") == []
    await bench.check_unaffected()


@pytest.mark.parametrize("version", VERSIONS)
async def test_offline_extra_field_and_long_id_are_accepted_and_stored_raw(
    bench_factory: BenchFactory, version: str
) -> None:
    """B10/B11 offline: an extra field is accepted and the frame stored as received; an
    over-long id tag is answered Invalid (never a CALLERROR) and its transaction message
    stored raw."""
    bench = await bench_factory(csms_down=True)
    long_tag = "L" * (21 if version == OCPP16 else 37)
    if version == OCPP16:
        texts = [
            '[2,"e1","StartTransaction",{"connectorId":1,"idTag":"' + long_tag + '",'
            '"meterStart":0,"timestamp":"' + STAMP + '","vendorExtra":[1]}]',
        ]
        authorize = {"idTag": long_tag}
    else:
        texts = [
            '[2,"e1","TransactionEvent",{"eventType":"Started","timestamp":"' + STAMP + '",'
            '"triggerReason":"Authorized","seqNo":0,"transactionInfo":{"transactionId":"T1"},'
            '"idToken":{"idToken":"' + long_tag + '","type":"ISO14443"},"vendorExtra":1}]',
        ]
        authorize = {"idToken": {"idToken": long_tag, "type": "ISO14443"}}
    async with bench.charger("CP-B11", version) as raw:
        answer = await raw.call("Authorize", authorize)
        info = answer[2].get("idTagInfo") or answer[2].get("idTokenInfo")
        assert answer[0] == 3 and info["status"] == "Invalid", answer
        for text in texts:
            await raw.send(text)
            result = await raw.recv_json()
            assert result[0] == 3, result
            info = result[2].get("idTagInfo") or result[2].get("idTokenInfo")
            assert info["status"] == "Invalid", result
    rows = await bench.ctl.store.outbox("CP-B11")
    assert [r.frame for r in rows] == texts
    await bench.check_unaffected()


# --------------------------------------------------------------------------- B12, B13, B14


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "deflate"])
@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
async def test_huge_frame_closes_1009_and_stores_nothing(
    bench_factory: BenchFactory, compressed: bool, offline: bool
) -> None:
    """B12: a 2 MiB text frame, raw or deflated to a few kB (a decompression bomb),
    closes the charger with 1009; nothing forwarded, nothing stored."""
    bench = await bench_factory(csms_down=offline)
    padding = "a" * (2 * 1024 * 1024)
    text = (
        '[2,"big","StartTransaction",{"connectorId":1,"idTag":"CARD","meterStart":0,'
        f'"timestamp":"{STAMP}","pad":"{padding}"}}]'
    )
    raw = bench.charger("CP-BIG", compression="deflate" if compressed else None)
    async with raw:
        with contextlib.suppress(ConnectionClosed):
            await raw.send(text, timeout=10)
        closed = await raw.wait_closed()
    assert closed.code == 1009
    assert bench.csms_got("CP-BIG") == []
    assert await bench.ctl.store.outbox("CP-BIG") == []
    await bench.check_unaffected()


async def test_huge_frame_is_counted(bench: Bench) -> None:
    """B12 ("every line is logged, with a counter"): an oversized frame shows in the
    controller's counters (``Metrics.security_events`` names oversized frames)."""
    before = sum(bench.ctl.metrics.security_events.values()) + sum(bench.ctl.metrics.notes.values())
    async with bench.charger("CP-BIG") as raw:
        with contextlib.suppress(ConnectionClosed):
            await raw.send('["' + "a" * (2 * 1024 * 1024) + '"]', timeout=10)
        assert (await raw.wait_closed()).code == 1009
    await asyncio.sleep(0.1)
    after = sum(bench.ctl.metrics.security_events.values()) + sum(bench.ctl.metrics.notes.values())
    assert after > before, "a 1009 close left no trace in the metrics"


@pytest.mark.parametrize("version", VERSIONS)
async def test_binary_frame_gets_a_callerror_and_is_kept(bench: Bench, version: str) -> None:
    """B13: a binary frame, even one holding a valid CALL: CALLERROR "-1"
    FormationViolation (1.6) / RpcFrameworkError (2.0.1); kept; not forwarded."""
    async with bench.charger("CP-BIN", version) as raw:
        for data in (b"\x00\x01", b'[2,"bin","Heartbeat",{}]', b""):
            await expect_callerror(raw, data, CODES[version]["malformed"])
        await still_served(raw, bench)
    assert heartbeat_only(bench.csms_got("CP-BIN"))
    await bench.check_unaffected()


async def test_binary_frames_beyond_the_rate_close_1003(bench_factory: BenchFactory) -> None:
    """B13: every binary frame gets its CALLERROR, and one more than
    ``listen.max_bad_frames_per_minute`` closes the charger with 1003."""
    bench = await bench_factory(listen={"max_bad_frames_per_minute": 3})
    async with bench.charger("CP-BINS") as raw:
        for _ in range(3):
            await expect_callerror(raw, b"\x00", CODES[OCPP16]["malformed"])
        with contextlib.suppress(ConnectionClosed):
            await raw.send(b"\x00")
        closed = await raw.wait_closed()
    assert closed.code == 1003
    assert bench.ctl.metrics.security_events["bad_frame_rate"] == 1
    await bench.check_unaffected()


async def test_invalid_utf8_text_frame_closes_1007(bench: Bench) -> None:
    """B14: a text frame that is not UTF-8 closes the charger with 1007; not forwarded."""
    async with bench.charger("CP-UTF") as raw:
        await raw.call("Heartbeat", {})
        with contextlib.suppress(ConnectionClosed):
            await raw.ws.send(b'[2,"u","Heartbeat",{"x":"\xff\xfe"}]', text=True)
        closed = await raw.wait_closed()
    assert closed.code == 1007
    assert heartbeat_only(bench.csms_got("CP-UTF"))
    await eventually(lambda: "CP-UTF" not in bench.ctl.chargers.sessions, what="CP-UTF to go")
    await bench.check_unaffected()


# --------------------------------------------------------------------------- B19, B20, B21


@pytest.mark.parametrize("offered", [(), ("ocpp1.5",), ("ocpp1.5", "ocpp3.0")])
async def test_no_supported_subprotocol_gets_101_without_the_header_then_close(
    bench: Bench, offered: tuple[str, ...]
) -> None:
    """B19 (R3): no Sec-WebSocket-Protocol, or none supported: 101 without the header,
    then an immediate close; no uplink; a security event."""
    started = time.monotonic()
    async with asyncio.timeout(5):
        ws = await connect(
            f"{bench.url}/CP-NOSUB",
            subprotocols=list(offered) or None,
            ping_interval=None,
        )
        try:
            assert ws.response is not None and ws.response.status_code == 101
            assert "Sec-WebSocket-Protocol" not in ws.response.headers
            assert ws.subprotocol is None
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        finally:
            await ws.close()
    assert time.monotonic() - started < 2
    assert ws.close_code is not None
    assert "CP-NOSUB" not in bench.csms.request_headers
    assert bench.ctl.metrics.security_events["no_supported_subprotocol"] == 1
    await bench.check_unaffected()


ODD_PATHS = [
    "/ocpp/CP%3A1",  # ':' (the Basic user separator)
    "/ocpp/" + "C" * 49,  # over 48 characters
    "/ocpp/..%2F",  # an encoded slash
    "/ocpp/%2e%2e",  # '..'
    "/ocpp/",  # no identity
    "/ocpp/CP%FF",  # not UTF-8
    "/ocpp/CP%00",  # a control character
]


async def test_odd_identity_is_refused_404(bench: Bench) -> None:
    """B20: an identity with ':', over 48 characters, an encoded slash or dot segment, or
    none at all: 404 before the upgrade, no uplink."""
    for path in ODD_PATHS:
        url = f"ws://127.0.0.1:{bench.ctl.listen_port}{path}"
        with pytest.raises(InvalidStatus) as refused:
            await connect(url, subprotocols=[OCPP16], ping_interval=None)
        assert refused.value.response.status_code == 404, path
    assert set(bench.csms.request_headers) == {"CP-BYSTANDER"}
    assert bench.ctl.metrics.security_events["bad_identity"] == len(ODD_PATHS)
    await bench.check_unaffected()


async def test_identity_normalisation_is_the_same_upstream(bench: Bench) -> None:
    """B20: where a path is normalised (last segment, percent-decoded), the uplink uses
    the very identity the controller took."""
    for n, path in enumerate(("/ocpp//CP-NORM", "/a/b/CP-NORM", "/ocpp/CP%2DNORM")):
        url = f"ws://127.0.0.1:{bench.ctl.listen_port}{path}"
        async with connect(url, subprotocols=[OCPP16], ping_interval=None) as ws:
            await ws.send(f'[2,"n{n}","Heartbeat",{{}}]')
            assert json.loads(await ws.recv())[:2] == [3, f"n{n}"]
        assert len(bench.csms.received_calls("CP-NORM", "Heartbeat")) == n + 1
    assert set(bench.csms.request_headers) == {"CP-BYSTANDER", "CP-NORM"}
    await bench.check_unaffected()


async def test_slowloris_handshake_is_closed_at_open_timeout(bench_factory: BenchFactory) -> None:
    """B21: a client that sends its handshake one byte at a time is closed once
    ``listen.open_timeout`` (1 s) has passed, before any uplink exists."""
    bench = await bench_factory(listen={"open_timeout": 1.0})
    request = (
        f"GET /ocpp/CP-SLOW HTTP/1.1\r\nHost: 127.0.0.1:{bench.ctl.listen_port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", bench.ctl.listen_port)
    started = time.monotonic()
    closed_after: float | None = None
    try:
        for byte in request[:40]:  # at most 40 bytes, 0.1 s apart: 4 s
            try:
                writer.write(bytes([byte]))
                await writer.drain()
                data = await asyncio.wait_for(reader.read(1024), timeout=0.1)
            except TimeoutError:
                continue
            except ConnectionError:
                data = b""
            if not data or data.startswith(b"HTTP/1.1 4"):
                closed_after = time.monotonic() - started
                break
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert closed_after is not None, "the slow handshake was never closed"
    assert 0.8 <= closed_after <= 2.5, closed_after
    assert "CP-SLOW" not in bench.csms.request_headers
    await bench.check_unaffected()


async def test_concurrent_handshakes_respect_the_per_ip_cap(bench_factory: BenchFactory) -> None:
    """B21 (per-IP cap): handshakes racing from one address cannot exceed
    ``max_connections_per_ip`` together (the check and the count are one step)."""
    bench = await bench_factory(listen={"max_connections_per_ip": 3})

    # The bystander holds one of the three slots.
    async def hold(n: int) -> RawCharger | int:
        raw = bench.charger(f"CP-RACE{n}")
        try:
            return await raw.connect()
        except InvalidStatus as exc:
            return exc.response.status_code

    results = await asyncio.gather(*(hold(n) for n in range(6)))
    admitted = [r for r in results if isinstance(r, RawCharger)]
    try:
        assert len(admitted) <= 2, f"{len(admitted)} admitted over a cap of 3 with 1 held"
        assert all(r == 429 for r in results if not isinstance(r, RawCharger))
    finally:
        for raw in admitted:
            await raw.close()
    await bench.check_unaffected()


# --------------------------------------------------------------------------- B22-B25


@pytest.mark.parametrize("version", VERSIONS)
async def test_null_payload_is_forwarded_as_is_online(bench: Bench, version: str) -> None:
    """B22 online: ``[2,"a","Heartbeat",null]`` is accepted and forwarded as it is; the
    CSMS's answer comes back as it is."""
    text = '[2,"n22","Heartbeat",null]'
    async with bench.charger("CP-NULL", version) as raw:
        await raw.send(text)
        answer = await raw.recv()
    assert bench.csms_got("CP-NULL") == [text]
    assert bench.csms.sent("CP-NULL") == [answer]
    await bench.check_unaffected()


@pytest.mark.parametrize("version", VERSIONS)
async def test_null_payload_is_answered_offline(bench_factory: BenchFactory, version: str) -> None:
    """B22 offline: a Heartbeat with a ``null`` payload is answered locally."""
    bench = await bench_factory(csms_down=True)
    async with bench.charger("CP-NULL", version) as raw:
        await raw.send('[2,"n22","Heartbeat",null]')
        answer = await raw.recv_json()
    assert answer[:2] == [3, "n22"] and "currentTime" in answer[2], answer
    await bench.check_unaffected()


@pytest.mark.parametrize("version", VERSIONS)
async def test_call_before_boot_is_accepted_gets_security_error(
    bench_factory: BenchFactory, version: str
) -> None:
    """B23 offline: a charger never accepted, answered Pending, gets SecurityError for
    other calls (J16E 3.10 / FR.04); nothing stored."""
    bench = await bench_factory(csms_down=True, offline={"unknown_charger": "pending"})
    if version == OCPP16:
        boot = {"chargePointVendor": "V", "chargePointModel": "M"}
        status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
    else:
        boot = {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"}
        status = {
            "timestamp": STAMP,
            "connectorStatus": "Available",
            "evseId": 1,
            "connectorId": 1,
        }
    async with bench.charger("CP-NEW", version) as raw:
        answer = await raw.call("BootNotification", boot)
        assert answer[0] == 3 and answer[2]["status"] == "Pending", answer
        refused = await raw.call("StatusNotification", status)
        assert refused[:3] == [4, refused[1], "SecurityError"], refused
        refused = await raw.call("Heartbeat", {})
        assert refused[2] == "SecurityError", refused
    assert await bench.ctl.store.outbox("CP-NEW") == []
    await bench.check_unaffected()


@pytest.mark.parametrize("version", VERSIONS)
async def test_pipelined_calls_are_queued_then_generic_error_beyond_the_bound(
    bench_factory: BenchFactory, version: str
) -> None:
    """B24: calls sent while one is unanswered are queued (``max_queued_calls`` = 2) and
    go up one at a time in order; the next one gets GenericError at once."""
    bench = await bench_factory(listen={"max_queued_calls": 2})
    bench.csms.delay("DataTransfer", 0.5, times=1)
    ids = ["q1", "q2", "q3", "q4"]
    async with bench.charger("CP-PIPE", version) as raw:
        for mid in ids:
            await raw.send(json.dumps([2, mid, "DataTransfer", {"vendorId": mid}]))
        first = await raw.recv_json()
        assert first[:3] == [4, "q4", "GenericError"], first
        answers = [await raw.recv_json(timeout=3) for _ in range(3)]
        assert [a[:2] for a in answers] == [[3, "q1"], [3, "q2"], [3, "q3"]]
        await still_served(raw, bench)
    calls = bench.csms.received_calls("CP-PIPE", "DataTransfer")
    assert [c.unique_id for c in calls] == ["q1", "q2", "q3"]
    assert bench.ctl.metrics.notes["charger_calls_overflow"] == 1
    await bench.check_unaffected()  # includes: never two open calls at the CSMS


ODD_TIMES = [
    "1970-01-01T00:00:00Z",
    "2999-12-31T23:59:59Z",
    "2025-01-01T12:00:00",  # no zone
    "2025-01-01T12:00:00.123456+02:00",  # 6 decimals, an offset
]


async def test_odd_timestamps_are_forwarded_unchanged(bench: Bench) -> None:
    """B25 online: odd timestamps are never rewritten: the CSMS gets the frames verbatim."""
    texts = [
        f'[2,"t25-{n}","StatusNotification",{{"connectorId":1,"errorCode":"NoError",'
        f'"status":"Available","timestamp":"{stamp}"}}]'
        for n, stamp in enumerate(ODD_TIMES)
    ]
    async with bench.charger("CP-TIME") as raw:
        for text in texts:
            await raw.send(text)
            assert (await raw.recv_json())[0] == 3
    assert bench.csms_got("CP-TIME") == texts
    await bench.check_unaffected()


async def test_odd_timestamps_are_stored_unchanged_offline(bench_factory: BenchFactory) -> None:
    """B25 offline: transaction messages with odd timestamps are stored as received."""
    bench = await bench_factory(csms_down=True)
    texts = [
        '[2,"t25-'
        + str(n)
        + '","MeterValues",{"connectorId":1,"meterValue":[{"timestamp":"'
        + stamp
        + '","sampledValue":[{"value":"'
        + str(n)
        + '"}]}]}]'
        for n, stamp in enumerate(ODD_TIMES)
    ]
    async with bench.charger("CP-TIME") as raw:
        for text in texts:
            await raw.send(text)
            assert (await raw.recv_json())[0] == 3
    assert [r.frame for r in await bench.ctl.store.outbox("CP-TIME")] == texts
    await bench.check_unaffected()
