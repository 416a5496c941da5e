"""Replay: drain a charger's outbox once its uplink is back, then enforce the verdicts.

Per charger, in this order, one call in flight (shared with live traffic through the
router's single upstream slot), each with a fresh message id:

1. the last BootNotification, if the charger booted while offline; while the CSMS
   answers Pending or Rejected the backlog waits;
2. the latest StatusNotification of each connector reported offline (not the history);
3. the outbox, ``ORDER BY seq``. A CALLRESULT deletes the message; a replayed
   StartTransaction's answer maps the provisional transactionId to the CSMS's, and its
   idTagInfo goes through the invalid-id policy. A CALLERROR (or no answer in time) is
   retried after interval x transmissions; after the last attempt the message becomes
   a dead letter, and the later messages of a dead StartTransaction go up with -1.

Live transaction messages keep being stored and answered locally (DRAINING) until the
outbox is empty; then the session is ONLINE.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from config.settings import Settings, charger_policy
from policies.invalid_id import (
    Action,
    is_dead_letter,
    limit_reached,
    on_refused_start,
    retry_wait,
)
from proxy import frames
from proxy.crashpoints import ARMED, crashpoint
from proxy.frames import Call, CallError, CallResult, FrameError
from proxy.metrics import Metrics
from proxy.router import OWN_ID_PREFIX
from proxy.session import UplinkGone
from proxy.store import OutboxRow, Statement, Store
from proxy.versions.ocpp16 import energy_wh
from proxy.versions.ocpp201 import energy_wh as energy_wh_201

if TYPE_CHECKING:
    from proxy.session import Session

_POLICY_TIMEOUT = 30.0

#: A transaction as the charger knows it: a provisional or CSMS id (1.6), the station's
#: transactionId (2.0.1).
TxRef = int | str


def fresh_id() -> str:
    return f"{OWN_ID_PREFIX}{uuid.uuid4().hex}"


def with_id(call: Call, message_id: str) -> Call:
    """The same call under another message id, its payload text kept as it was."""
    return Call(message_id, call.action, call.payload, frames.with_message_id(call.raw, message_id))


class Replayer:
    """Drains outboxes and applies the invalid-id policy, for every charger."""

    def __init__(self, settings: Settings, store: Store, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics if metrics is not None else Metrics()
        #: (identity, transaction) -> (meter start Wh, limit Wh, connector or EVSE) of
        #: transactions charging on towards their energy limit
        self._watched: dict[tuple[str, TxRef], tuple[float, int, int | None]] = {}
        #: (identity, transaction) -> last energy register reading (Wh)
        self._energy: dict[tuple[str, TxRef], float] = {}
        self._suspended: set[tuple[str, TxRef]] = set()
        #: Told each replayed transaction message's request and the CSMS's answer (the
        #: site's authorization cache learns from them as from answers passing through).
        self.on_answer: Callable[[str, dict[str, Any], dict[str, Any]], Awaitable[None]] | None = (
            None
        )

    # -- session set-up --------------------------------------------------------------

    async def attach(self, session: Session) -> None:
        """Load a charger's transaction id mappings and watched transactions."""
        router = session.router
        for tx in await self.store.transactions_of(session.identity):
            prov, real = tx["provisional"], tx["real"]
            if real is not None:
                router.tx_up[prov] = real
                if real != -1:
                    router.tx_down[real] = prov
            if tx["deauthorized"]:
                router.deauthorized.add(prov)
            if tx["cap_wh"] is not None and not tx["cap_applied"] and not tx["stopped"]:
                self._watch(session, prov, tx["meter_start"], tx["cap_wh"], tx["connector"])
        for stx in await self.store.station_transactions_of(session.identity):
            ref = stx["transaction_id"]
            if stx["deauthorized"]:
                router.deauthorized.add(ref)
            if stx["cap_wh"] is not None and not stx["cap_applied"] and not stx["ended"]:
                self._watch(session, ref, stx["meter_start"] or 0.0, stx["cap_wh"], stx["evse"])

    def _watch(
        self, session: Session, ref: TxRef, meter_start: float, cap: int, connector: int | None
    ) -> None:
        self._watched[(session.identity, ref)] = (meter_start, cap, connector)
        session.router.watch("MeterValues")
        session.router.watch("TransactionEvent")

    # -- the drain ---------------------------------------------------------------------

    async def drain(self, session: Session) -> None:
        """Replay everything stored for the charger on the uplink it has now; ONLINE
        when nothing is left. Ends (without going ONLINE) if that uplink goes."""
        uplink = session.uplink
        if uplink is None:
            return
        log = session.log
        started = time.monotonic()
        depth = await self.store.outbox_depth(session.identity)
        session.replay_left = depth
        last_report = started
        reported = 0
        log.info("replay_started", outbox_depth=depth)
        try:
            while True:
                if session.uplink is not uplink:
                    raise UplinkGone()
                mark = session.stored_count
                await self._replay_boot(session)
                await self._replay_statuses(session)
                rows = await self.store.outbox(session.identity, limit=200)
                if not rows:
                    if session.uplink is not uplink:
                        raise UplinkGone()
                    if session.stores_settled() and session.stored_count == mark:
                        session.router.drained()
                        session.replay_left = 0
                        log.info(
                            "replay_done",
                            replayed=session.replayed,
                            seconds=round(time.monotonic() - started, 3),
                        )
                        return
                    # A local answer is being committed: wait for it, then look again.
                    await session.wait_stored(1.0)
                    continue
                for row in rows:
                    await self._replay_row(session, row)
                    now = time.monotonic()
                    if now - last_report >= 5.0 or session.replayed - reported >= 500:
                        last_report, reported = now, session.replayed
                        left = await self.store.outbox_depth(session.identity)
                        rate = session.replayed / max(now - started, 1e-6)
                        session.replay_left = left
                        log.info(
                            "replay_progress",
                            replayed=session.replayed,
                            left=left,
                            rate_per_s=round(rate, 1),
                            eta_s=round(left / rate, 1) if rate > 0 else None,
                        )
        except UplinkGone:
            log.info("replay_interrupted", replayed=session.replayed)

    async def _send(self, session: Session, call: Call) -> CallResult | CallError | None:
        """One transmission upstream; None when the CSMS gave no answer in time."""
        try:
            return await session.call_csms(
                with_id(call, fresh_id()), self.settings.csms.call_timeout
            )
        except TimeoutError:
            return None

    async def _replay_boot(self, session: Session) -> None:
        while True:
            record = await self.store.charger(session.identity)
            if record is None or not record["boot_replay"] or not record["boot_frame"]:
                return
            frame = frames.parse(record["boot_frame"])
            assert isinstance(frame, Call)
            answer = await self._send(session, frame)
            status = (
                answer.payload.get("status")
                if isinstance(answer, CallResult) and isinstance(answer.payload, dict)
                else None
            )
            if status == "Accepted":
                await self.store.boot_replayed(session.identity, record["boot_frame"])
                session.log.info("boot_replayed")
                return
            interval = 0
            if isinstance(answer, CallResult) and isinstance(answer.payload, dict):
                raw_interval = answer.payload.get("interval")
                interval = raw_interval if isinstance(raw_interval, int) else 0
            wait = min(max(interval, 1), self.settings.replay.boot_retry_max)
            session.log.info("boot_replay_waiting", status=status, wait=wait)
            await asyncio.sleep(wait)

    async def _replay_statuses(self, session: Session) -> None:
        for status in await self.store.connector_statuses(session.identity):
            if not status["replay"]:
                continue
            frame = frames.parse(status["frame"])
            assert isinstance(frame, Call)
            answer = await self._send(session, frame)
            if answer is not None:
                await self.store.status_replayed(
                    session.identity, status["connector"], status["frame"]
                )

    async def _replay_row(self, session: Session, row: OutboxRow) -> None:
        identity = session.identity
        _, _, attempts, interval = charger_policy(self.settings, identity)
        router = session.router
        transmissions = row.attempts
        while True:
            try:
                stored = frames.parse(row.frame)
            except FrameError:  # pragma: no cover - only well-formed calls are stored
                await self.store.refused(row.seq, attempts, "unreadable", dead=True)
                return
            assert isinstance(stored, Call)
            if (
                row.offline
                and self.settings.replay.mark_offline
                and row.action == "TransactionEvent"
            ):
                stored = _marked_offline(stored)
            call = router.dialect.rewrite_up(stored, router.tx_up, router.deauthorized)
            answer = await self._send(session, call)
            if isinstance(answer, CallResult):
                if ARMED:
                    crashpoint("after_callresult_before_mark")
                await self._delivered(session, row, stored, answer)
                self.metrics.replayed[row.action, "delivered"] += 1
                return
            code = answer.code if isinstance(answer, CallError) else "Timeout"
            if code == "SecurityError" and await self.store.rearm_boot(identity):
                # The CSMS does not know the charger (any more): register it again and
                # retry; this costs no attempt (R42, F2).
                session.log.warning("replay_security_error", action=row.action, seq=row.seq)
                await self._replay_boot(session)
                continue
            transmissions += 1
            dead = is_dead_letter(transmissions, attempts)
            await self.store.refused(row.seq, transmissions, code, dead=dead)
            self.metrics.replayed[row.action, "dead_letter" if dead else "refused"] += 1
            session.log.warning(
                "replay_refused",
                action=row.action,
                seq=row.seq,
                code=code,
                transmissions=transmissions,
                dead_letter=dead,
            )
            if dead:
                if row.action == "StartTransaction" and row.tx_id is not None:
                    await self._dead_start(session, row.tx_id)
                return
            await asyncio.sleep(retry_wait(interval, transmissions))

    async def _dead_start(self, session: Session, prov: int) -> None:
        """Later messages of a StartTransaction the CSMS never took go up with -1."""
        session.router.tx_up[prov] = -1
        await self.store.apply(self.store.map_transaction(session.identity, prov, -1))

    async def _delivered(
        self, session: Session, row: OutboxRow, stored: Call, answer: CallResult
    ) -> None:
        identity = session.identity
        router = session.router
        extra: list[Statement] = []
        payload: dict[str, Any] = answer.payload if isinstance(answer.payload, dict) else {}
        start_status: str | None = None
        if row.action == "StartTransaction" and row.tx_id is not None:
            real = payload.get("transactionId")
            if isinstance(real, int):
                router.tx_up[row.tx_id] = real
                router.tx_down[real] = row.tx_id
                if ARMED:
                    crashpoint("mid_mapping_update")
                extra.append(self.store.map_transaction(identity, row.tx_id, real))
            info = payload.get("idTagInfo")
            if isinstance(info, dict) and isinstance(info.get("status"), str):
                start_status = info["status"]
        elif row.action == "StopTransaction" and row.tx_id is not None:
            extra.append(self.store.close_transaction(identity, row.tx_id))
        ref: TxRef | None = row.tx_id
        if row.action == "TransactionEvent":
            ref = _station_tx(row.frame)
            info = payload.get("idTokenInfo")
            if isinstance(info, dict) and isinstance(info.get("status"), str):
                start_status = info["status"]
        await self.store.delivered(row.seq, *extra)
        session.replayed += 1
        if (
            self.on_answer is not None
            and row.action in _LEARNED_FROM
            and isinstance(stored.payload, dict)
        ):
            await self.on_answer(session.identity, stored.payload, payload)
        if start_status is not None and ref is not None:
            await self._verdict(session, ref, start_status)

    # -- the invalid-id policy -------------------------------------------------------

    async def _tx_meta(self, identity: str, ref: TxRef) -> dict[str, Any] | None:
        """running, meter_start and connector (or EVSE) of a transaction."""
        if isinstance(ref, str):
            stx = await self.store.station_transaction(identity, ref)
            if stx is None:
                return None
            return {
                "running": not stx["ended"],
                "meter_start": stx["meter_start"],
                "connector": stx["evse"],
            }
        for tx in await self.store.transactions_of(identity):
            if tx["provisional"] == ref:
                return {
                    "running": not tx["stopped"],
                    "meter_start": tx["meter_start"],
                    "connector": tx["connector"],
                }
        return None

    async def _set_policy(self, identity: str, ref: TxRef, **flags: Any) -> None:
        if isinstance(ref, str):
            await self.store.set_station_policy(identity, ref, **flags)
        else:
            await self.store.set_policy(identity, ref, **flags)

    async def _verdict(self, session: Session, ref: TxRef, status: str) -> None:
        identity = session.identity
        tx = await self._tx_meta(identity, ref)
        if tx is None:
            return
        stop, cap, _, _ = charger_policy(self.settings, identity)
        reading = self._energy.get((identity, ref))
        start = tx["meter_start"]
        delivered = reading - (start or 0.0) if reading is not None else None
        decision = on_refused_start(
            status,
            running=tx["running"],
            stop_on_invalid_id=stop,
            max_energy_wh=cap,
            delivered_wh=delivered,
        )
        if decision.action is Action.NONE:
            return
        session.log.warning(
            "invalid_id_policy", transaction_id=ref, status=status, action=decision.action.value
        )
        self.metrics.policy_actions[decision.action.value] += 1
        dialect = session.router.dialect
        if decision.action is Action.STOP:
            session.router.deauthorized.add(ref)
            await self._set_policy(identity, ref, deauthorized=True)
            action, payload = dialect.stop_call(ref)
            session._spawn(self._ask(session, action, payload), "policy")
        elif decision.action is Action.SUSPEND:
            await self._suspend(session, ref, tx["connector"])
        else:
            await self._set_policy(identity, ref, cap_wh=cap)
            self._watch(session, ref, start or 0.0, cap, tx["connector"])
            if delivered is None:
                # Without energy readings the limit cannot be checked: the transaction
                # charges on until the charger reports Energy.Active.Import.Register.
                session.log.warning("energy_cap_without_meter_values", transaction_id=ref)

    async def _ask(self, session: Session, action: str, payload: dict[str, Any]) -> None:
        with contextlib.suppress(TimeoutError, UplinkGone):
            answer = await session.call_charger(action, payload, _POLICY_TIMEOUT)
            session.log.info(
                "policy_call_answered",
                action=action,
                status=answer.payload.get("status")
                if isinstance(answer, CallResult) and isinstance(answer.payload, dict)
                else None,
            )

    async def _suspend(self, session: Session, ref: TxRef, connector: int | None) -> None:
        key = (session.identity, ref)
        if key in self._suspended:
            return
        self._suspended.add(key)
        self._watched.pop(key, None)
        await self._set_policy(session.identity, ref, cap_applied=True)
        action, payload = session.router.dialect.suspend_call(ref, connector)
        session._spawn(self._ask(session, action, payload), "policy")

    async def meter(self, session: Session, payload: dict[str, Any]) -> None:
        """Energy readings from the charger (live or stored): watch capped transactions."""
        suspend = self.meter_now(session, payload)
        if suspend is not None:
            await suspend

    def meter_now(
        self, session: Session, payload: dict[str, Any]
    ) -> Coroutine[Any, Any, None] | None:
        """:meth:`meter` in two steps: the reading is noted now; what is returned, if
        anything, suspends the capped transaction that reading took past its limit."""
        ref: TxRef
        tx_id = payload.get("transactionId")
        if type(tx_id) is int:
            ref = session.router.tx_down.get(tx_id, tx_id)
            reading = energy_wh(payload)
        else:
            info = payload.get("transactionInfo")
            station_id = info.get("transactionId") if isinstance(info, dict) else None
            if not isinstance(station_id, str):
                return None
            ref = station_id
            reading = energy_wh_201(payload)
        if reading is None:
            return None
        key = (session.identity, ref)
        self._energy[key] = reading
        watched = self._watched.get(key)
        if watched is not None:
            meter_start, cap, connector = watched
            if limit_reached(reading - meter_start, cap):
                session.log.warning("energy_limit_reached", transaction_id=ref, limit_wh=cap)
                return self._suspend(session, ref, connector)
        return None


#: Replayed actions whose answers carry an id's status (idTagInfo / idTokenInfo).
_LEARNED_FROM = frozenset({"StartTransaction", "StopTransaction", "TransactionEvent"})


def _marked_offline(call: Call) -> Call:
    """A TransactionEvent that happened while the uplink was down, flagged ``offline``."""
    exact = frames.exact_payload(call)
    if not isinstance(exact, dict) or exact.get("offline") is True:
        return call
    payload = dict(exact, offline=True)
    return Call(call.id, call.action, payload, frames.call(call.id, call.action, payload))


def _station_tx(frame: str) -> str | None:
    """The station's transactionId in a stored TransactionEvent."""
    call = frames.parse(frame)
    payload = call.payload if isinstance(call, Call) and isinstance(call.payload, dict) else {}
    info = payload.get("transactionInfo")
    tx_id = info.get("transactionId") if isinstance(info, dict) else None
    return tx_id if isinstance(tx_id, str) else None
