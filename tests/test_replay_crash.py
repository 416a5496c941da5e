"""``kill -9`` during replay (SCENARIOS.md 11, RELIABILITY.md 5.4 F5).

The controller runs as a subprocess (``python -m proxy serve``) with a crash point armed
(``OCPP_LC_CRASHPOINT=<point>:<n>``: SIGKILL at the n-th pass). A charger's session is
stored while the CSMS is down; the CSMS comes back, the drain starts and the process dies
at the point; it is restarted without the crash point and the charger reconnects. Then:
the CSMS has every stored message, in the charger's order, with at most one duplicate (the
call in flight), and the transaction id mapping is consistent: every later message, and a
StopTransaction sent after the restart, carries the id the CSMS gave the start.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from fault_tools import Service
from peers import (
    ChargerPeer16,
    CsmsPeer,
    LedgerEntry,
    StepClock,
    controller_url,
    delivery_figures,
)

pytestmark = pytest.mark.timeout(60)

IDENTITY = "CP1"
TAG = "SITE-TAG-1"


def crash_service(workdir: Path, csms_url: str, crashpoint: str) -> Service:
    """The controller for these tests: a site list with TAG, fast reconnects and retries."""
    site_list = workdir / "site-list.csv"
    site_list.write_text(f"id_tag,status,expiry,parent_id_tag\n{TAG},Accepted,,\n")
    return Service(
        store_path=workdir / "lc.sqlite3",
        log_path=workdir / "service.log",
        csms_url=csms_url,
        crashpoint=crashpoint,
        extra_env={
            "OCPP_LC_CSMS__CALL_TIMEOUT": "2",
            "OCPP_LC_LOG__FORMAT": "json",
            "OCPP_LC_UPLINK__RECONNECT_MIN": "0.05",
            "OCPP_LC_UPLINK__RECONNECT_MAX": "0.3",
            "OCPP_LC_UPLINK__RECONNECT_JITTER": "0.05",
            "OCPP_LC_UPLINK__MAX_CONNECTS_PER_SECOND": "500",
            "OCPP_LC_POLICY__TRANSACTION_MESSAGE_RETRY_INTERVAL": "0.1",
            "OCPP_LC_LOCAL_LIST__PATH": str(site_list),
        },
    )


def outbox_counts(store_path: Path) -> dict[str, int]:
    """Outbox rows by state, after an integrity check of the file."""
    with contextlib.closing(sqlite3.connect(store_path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
    return {str(state): int(count) for state, count in rows}


def mapping_violations(seen: list[LedgerEntry]) -> list[str]:
    """MeterValues / StopTransaction the CSMS took whose transactionId is not the one the
    CSMS gave in its latest answer to a StartTransaction before it."""
    current: int | None = None
    problems = []
    for e in seen:
        if e.action == "StartTransaction" and e.outcome == "CALLRESULT":
            current = e.response["transactionId"]
        elif (
            e.action in ("MeterValues", "StopTransaction")
            and e.outcome == "CALLRESULT"
            and e.request.get("transactionId") != current
        ):
            problems.append(f"{e.action} with {e.request.get('transactionId')} != {current}")
    return problems


# after_upstream_send passes: 1 boot, 2 status, 3 start, 4.. meter values.
# after_callresult_before_mark passes: 1 start, 2.. meter values.
CRASHES = [
    "after_upstream_send:3",
    "after_upstream_send:5",
    "after_callresult_before_mark:1",
    "after_callresult_before_mark:3",
    "mid_mapping_update:1",
]


@pytest.mark.parametrize("crashpoint", CRASHES)
async def test_kill_during_replay_loses_and_reorders_nothing(
    csms: CsmsPeer, tmp_path: Path, crashpoint: str
) -> None:
    """Scenario 11 / F5: SIGKILL mid-drain, restart: all in order, <= 1 duplicate, ids mapped."""
    await csms.stop()
    clock = StepClock()
    ledger: list[LedgerEntry] = []
    svc = crash_service(tmp_path, csms.url, crashpoint)
    try:
        svc.spawn()
        await svc.ready()
        url = controller_url(svc.listen_port)
        cp = ChargerPeer16(url, IDENTITY, clock=clock)
        async with cp:
            await cp.boot()
            await cp.status("Charging")
            tx = await cp.start_transaction(TAG, meter_start=1000)
            for wh in (1100, 1200, 1300, 1400):
                await cp.meter_values(tx, wh)
            await csms.start()
            code = await svc.exited(10.0)
            assert code == -signal.SIGKILL, f"did not die at {crashpoint}: {svc.log_tail()}"
            await cp.wait_closed()
        ledger += cp.ledger
        received_before = len(csms.inbound(IDENTITY))

        began = time.monotonic()
        svc.crashpoint = None  # the restart runs unarmed, on the same ports and store
        svc.spawn()
        await svc.ready()
        cp2 = ChargerPeer16(controller_url(svc.listen_port), IDENTITY, clock=clock)
        async with cp2:

            def all_there() -> bool:
                return not delivery_figures(ledger, csms.inbound(IDENTITY)).lost

            await csms.wait_until(all_there, 10.0, "every stored message at the CSMS")
            recovered = time.monotonic() - began
            await cp2.stop_transaction(tx, 1500)
            await csms.wait_until(
                lambda: any(
                    e.outcome == "CALLRESULT"
                    for e in csms.received_calls(IDENTITY, "StopTransaction")
                ),
                10.0,
                "the StopTransaction",
            )
        ledger += cp2.ledger
        assert await svc.stop() == 0
        counts = outbox_counts(svc.store_path)
    finally:
        svc.kill()

    seen = csms.inbound(IDENTITY)
    figures = delivery_figures(ledger, seen)
    tx_seen = [e for e in seen if e.action in ("StartTransaction", "MeterValues")]
    print(
        f"\n{crashpoint}: {figures} received_before_crash={received_before} "
        f"recovery={recovered:.2f}s transaction_calls_at_csms={len(tx_seen)}"
    )
    assert figures.lost == []
    assert figures.order_violations == 0
    assert figures.duplicates <= 1
    assert figures.unexpected == []
    assert mapping_violations(seen) == []
    stop = [e for e in seen if e.action == "StopTransaction"]
    assert [e.request["transactionId"] for e in stop] == [
        [e for e in seen if e.action == "StartTransaction"][-1].response["transactionId"]
    ]
    assert counts.get("pending", 0) == 0
    assert counts.get("dead", 0) == 0
    csms.assert_clean()
