"""Tests of proxy.store: durability settings, migrations, the outbox and its dedupe,
dead letters, the site list, provisional transaction ids, and a locked database
(RELIABILITY.md R38, R39, R41, F7 and §5.6).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peers import CALL, CALLERROR, CALLRESULT, RawCharger, controller_url

from policies.authorization import AuthEntry, AuthStatus
from proxy.store import (
    _ROWS_MAX,
    MIGRATIONS,
    OUTBOX_BUCKETS,
    NewTransaction,
    OutboxItem,
    Store,
    StoreError,
    _padded_rows,
    outbox_bucket,
)

if TYPE_CHECKING:
    from conftest import ControllerFactory

pytestmark = pytest.mark.timeout(30)

PROVISIONAL_START = 2_000_000_000
STAMP = "2025-01-01T12:00:00.000Z"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """An open store in the test's directory."""
    s = Store(tmp_path / "store.sqlite3", busy_timeout_ms=1500)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def item(identity: str, n: int, key: str | None = None, action: str = "MeterValues") -> OutboxItem:
    """A distinct outbox message: its frame and message id carry ``n``."""
    payload = {"connectorId": 1, "transactionId": 7, "meterValue": [{"n": n}]}
    text = json.dumps([CALL, f"m{n}", action, payload], separators=(",", ":"))
    return OutboxItem(identity, action, f"m{n}", text, 7, key)


def new_tx(identity: str, key: str, meter_start: int = 0) -> NewTransaction:
    return NewTransaction(identity, key, "CARD", 1, meter_start, STAMP, "Accepted")


def start_item(identity: str, key: str) -> OutboxItem:
    return OutboxItem(
        identity, "StartTransaction", f"id-{key}", f'[2,"id-{key}","x",{{}}]', None, key
    )


# --------------------------------------------------------------------------- set-up


async def test_durability_pragmas(store: Store) -> None:
    """WAL, synchronous=FULL (2), the configured busy timeout, the latest schema version."""
    pragmas = await store.pragmas()
    assert pragmas["journal_mode"] == "wal"
    assert pragmas["synchronous"] == 2
    assert pragmas["busy_timeout"] == 1500
    assert pragmas["user_version"] == len(MIGRATIONS)


async def test_migrations_bring_an_empty_file_up_to_date(tmp_path: Path) -> None:
    """An empty database file gets every table and the schema version."""
    path = tmp_path / "empty.sqlite3"
    path.touch()
    s = Store(path)
    await s.open()
    await s.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert version == len(MIGRATIONS)
    assert {
        "outbox",
        "transactions",
        "site_list",
        "charger_lists",
        "charger_list_versions",
        "auth_cache",
        "chargers",
        "connector_status",
        "meta",
    } <= tables
    # Opening again is a no-op: nothing is migrated twice.
    s = Store(path)
    await s.open()
    try:
        assert (await s.pragmas())["user_version"] == len(MIGRATIONS)
        assert await s.integrity_check() == "ok"
    finally:
        await s.close()


async def test_version_3_rebuilds_the_outbox_keeping_rows_seq_and_retries(
    tmp_path: Path,
) -> None:
    """A version-2 file (outbox with a unique dedupe index) comes up with the same rows,
    seq values and AUTOINCREMENT high-water mark, and each charger's last dedupe key,
    so that a retry of its last message is still recognised after the upgrade."""
    path = tmp_path / "v2.sqlite3"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.executescript(f"BEGIN; {MIGRATIONS[0]}; {MIGRATIONS[1]}; PRAGMA user_version=2; COMMIT;")
        for n, (identity, key) in enumerate(
            [("CP1", "a"), ("CP2", "b"), ("CP1", "c"), ("CP1", None), ("CP3", "d")]
        ):
            db.execute(
                "INSERT INTO outbox(identity, action, message_id, frame, dedupe_key, created)"
                " VALUES (?, 'MeterValues', ?, '[2]', ?, 1.0)",
                (identity, f"m{n}", key),
            )
        db.execute("DELETE FROM outbox WHERE identity = 'CP3'")  # delivered: seq 5 used
        db.execute("UPDATE outbox SET state = 'dead' WHERE message_id = 'm1'")
    s = Store(path)
    await s.open()
    try:
        assert (await s.pragmas())["user_version"] == len(MIGRATIONS) >= 3
        rows = await s.outbox("CP1")
        assert [(r.seq, r.message_id) for r in rows] == [(1, "m0"), (3, "m2"), (4, "m3")]
        assert [r.message_id for r in await s.outbox(state="dead")] == ["m1"]
        await s.append(item("CP1", 10, key="c"))  # a retry of CP1's last keyed message
        await s.append(item("CP1", 11, key="a"))  # an older key: a new message
        await s.append(item("CP2", 12, key="b"))  # CP2's retry
        await s.append(item("CP3", 13, key="e"))
        (sent,) = await s.outbox("CP3")
        await s.delivered(sent.seq)
        await s.append(item("CP3", 14, key="e"))  # a retry after its delivery: not again
        await s.append(item("CP4", 15, key="e"))
        rows = await s.outbox(limit=100)
        assert [(r.seq, r.message_id) for r in rows] == [
            (1, "m0"),
            (3, "m2"),
            (4, "m3"),
            (6, "m11"),
            (8, "m15"),
        ]
        assert await s.integrity_check() == "ok"
    finally:
        await s.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        buckets = db.execute("SELECT identity, bucket FROM outbox").fetchall()
        plan = " ".join(
            str(r[3])
            for r in db.execute(
                "EXPLAIN QUERY PLAN SELECT seq FROM outbox WHERE state = 'pending'"
                " AND bucket = ? AND identity = ? ORDER BY seq LIMIT 200",
                (outbox_bucket("CP1"), "CP1"),
            )
        )
    assert all(b == outbox_bucket(i) for i, b in buckets)
    assert len({outbox_bucket(f"CP{n}") for n in range(1000)}) == OUTBOX_BUCKETS
    # one charger's messages are read through its bucket, in seq order, without sorting
    assert "USING COVERING INDEX outbox_by_bucket (bucket=? AND state=?)" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


async def test_closed_store_refuses_writes(tmp_path: Path) -> None:
    """A write to a store that is not open raises StoreError (the caller answers InternalError)."""
    s = Store(tmp_path / "closed.sqlite3")
    with pytest.raises(StoreError):
        await s.append(item("CP1", 1))
    await s.open()
    await s.close()
    with pytest.raises(StoreError):
        await s.append(item("CP1", 2))


async def test_close_tells_every_waiter(tmp_path: Path) -> None:
    """Closing while messages wait for a group commit: each waiter is told, stored
    (None) or refused (StoreError), and what was told stored is in the file."""
    s = Store(tmp_path / "closing.sqlite3")
    await s.open()
    told: dict[int, StoreError | None] = {}
    for n in range(300):
        s.append_soon(item("CP1", n, key=f"k{n}"), lambda e, n=n: told.__setitem__(n, e))
        if n % 100 == 99:
            await asyncio.sleep(0)  # a commit under way while more arrive
    await s.close()
    assert sorted(told) == list(range(300))
    assert all(e is None or isinstance(e, StoreError) for e in told.values())
    stored = [n for n, e in told.items() if e is None]
    with sqlite3.connect(tmp_path / "closing.sqlite3") as con:
        kept = [int(m[1:]) for (m,) in con.execute("SELECT message_id FROM outbox ORDER BY seq")]
    assert set(stored) <= set(kept)
    assert kept == sorted(kept)


# --------------------------------------------------------------------------- outbox


async def test_concurrent_appends_are_durable_and_ordered_per_charger(tmp_path: Path) -> None:
    """200 coroutines appending at once: all committed, per-charger order kept, commits grouped."""
    path = tmp_path / "group.sqlite3"
    s = Store(path)
    await s.open()
    commits: list[float] = []
    s.on_commit = commits.append
    per_writer = 5

    async def writer(w: int) -> None:
        for k in range(per_writer):
            await s.append(item(f"CP{w % 20}", w * 100 + k, key=f"k{w}-{k}"))

    try:
        await asyncio.gather(*(writer(w) for w in range(200)))
    finally:
        await s.close()
    total = 200 * per_writer
    assert len(commits) < total / 4, f"{len(commits)} commits for {total} appends"

    reopened = Store(path)
    await reopened.open()
    try:
        rows = await reopened.outbox(limit=10 * total)
        assert len(rows) == total
        assert [r.seq for r in rows] == sorted(r.seq for r in rows)
        for w in range(200):
            ordered = [
                r.message_id
                for r in await reopened.outbox(f"CP{w % 20}", limit=total)
                if int(r.message_id[1:]) // 100 == w
            ]
            assert ordered == [f"m{w * 100 + k}" for k in range(per_writer)]
        assert await reopened.integrity_check() == "ok"
    finally:
        await reopened.close()


async def test_dedupe_key_stores_a_message_once_per_charger(store: Store) -> None:
    """The same dedupe key is stored once per charger; no key never deduplicates."""
    await store.append(item("CP1", 1, key="K"))
    await store.append(item("CP1", 2, key="K"))  # the charger's retry
    await store.append(item("CP2", 3, key="K"))  # another charger
    await store.append(item("CP1", 4, key=None))
    await store.append(item("CP1", 5, key=None))
    rows = await store.outbox()
    assert [(r.identity, r.message_id) for r in rows] == [
        ("CP1", "m1"),
        ("CP2", "m3"),
        ("CP1", "m4"),
        ("CP1", "m5"),
    ]
    assert await store.outbox_depth("CP1") == 3
    assert await store.depths() == {"CP1": 3, "CP2": 1}


def appended_soon(store: Store, items: list[OutboxItem]) -> asyncio.Future[list[Any]]:
    """Hand ``items`` to the store's quick path at once; done with what each callback
    was told, once all were called."""
    told: list[Any] = []
    done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()

    def then(error: StoreError | None) -> None:
        told.append(error)
        if len(told) == len(items):
            done.set_result(told)

    for i in items:
        store.append_soon(i, then)
    return done


async def test_one_group_commit_keeps_order_values_and_dedupe(store: Store) -> None:
    """Messages handed over together go in one statement: in order, every column as
    given (no transaction id, an integer one, the offline flag), a retry within the
    same commit stored once; a batch mixing other statements in commits as well."""
    commits: list[float] = []
    store.on_commit = commits.append
    items = [item(f"CP{n % 3}", n, key=f"k{n}") for n in range(50)]
    items[10] = OutboxItem("CP1", "MeterValues", "m10", items[10].frame, None, "k10", False)
    items.append(item("CP1", 99, key="k49"))  # CP1's retry of m49, in the same commit
    assert await appended_soon(store, items) == [None] * len(items)
    assert len(commits) == 1
    rows = await store.outbox(limit=100)
    assert [r.message_id for r in rows] == [f"m{n}" for n in range(50)]
    assert [r.frame for r in rows] == [i.frame for i in items[:50]]
    assert [(r.identity, r.tx_id, r.offline) for r in rows[9:12]] == [
        ("CP0", 7, 1),
        ("CP1", None, 0),
        ("CP2", 7, 1),
    ]
    # outbox messages with another kind of statement: one transaction all the same
    mixed = appended_soon(store, [item("CP0", 100 + n, key=f"x{n}") for n in range(3)])
    await asyncio.gather(mixed, store.append(item("CP1", 200), store.stop_transaction("CP1", 5)))
    rows = await store.outbox(limit=100)
    assert [r.message_id for r in rows[50:]] == ["m100", "m101", "m102", "m200"]


@pytest.mark.parametrize("chargers", [1, 7, 1000])
async def test_large_group_commit_in_several_statements(store: Store, chargers: int) -> None:
    """A group commit larger than one statement takes (rows of _ROWS_MAX, padded to a
    multiple of _ROWS_STEP) is one commit all the same: every message once, in the
    order handed over, retries within it (also across a statement boundary) and of
    what was stored before left out."""
    before = item("CP0", -1, key="k-1")
    await store.append(before)
    items = [item(f"CP{n % chargers}", n, key=f"k{n}") for n in range(_ROWS_MAX + 77)]
    # CP0's retry of what it stored before, as its first message of the commit
    items.insert(0, item("CP0", 10_000, key="k-1"))
    # a retry right after its original, as the first row of the second statement
    last = items[_ROWS_MAX - 1]
    items.insert(
        _ROWS_MAX,
        OutboxItem(last.identity, "MeterValues", "again", last.frame, None, last.dedupe_key),
    )
    commits: list[float] = []
    store.on_commit = commits.append
    assert await appended_soon(store, items) == [None] * len(items)
    assert len(commits) == 1
    rows = await store.outbox(limit=10 * _ROWS_MAX)
    assert [r.message_id for r in rows] == ["m-1"] + [f"m{n}" for n in range(_ROWS_MAX + 77)]
    assert len({r.seq for r in rows}) == len(rows)


def test_statement_sizes_are_few_and_tight() -> None:
    """Every run of outbox rows is bound to a statement at least its size and at most a
    step larger, with few enough sizes that every one stays prepared."""
    sizes = {_padded_rows(n) for n in range(1, _ROWS_MAX + 1)}
    assert len(sizes) <= 64
    for n in range(1, _ROWS_MAX + 1):
        assert n <= _padded_rows(n) < n + (8 if n < 64 else 64)
    assert _padded_rows(_ROWS_MAX) == _ROWS_MAX


@pytest.mark.parametrize("rows", [2, 7, 8, 9, 63, 64, 65, 130])
async def test_group_commit_of_any_size(store: Store, rows: int) -> None:
    """A group commit stores exactly its rows, in order, whatever NULL rows pad it."""
    items = [item(f"CP{n % 5}", n, key=f"k{n}") for n in range(rows)]
    assert await appended_soon(store, items) == [None] * rows
    stored = await store.outbox(limit=1000)
    assert [r.message_id for r in stored] == [f"m{n}" for n in range(rows)]


async def test_dead_letters_retry_and_drop_counts(store: Store) -> None:
    """Dead letters are listed apart; retry and drop report how many they touched."""
    for n in range(1, 5):
        await store.append(item("CP1", n, key=f"k{n}"))
    rows = await store.outbox("CP1")
    for row in rows[:3]:
        await store.refused(row.seq, 3, "InternalError", dead=True)
    await store.refused(rows[3].seq, 1, "Timeout", dead=False)
    dead = await store.outbox("CP1", state="dead")
    assert [r.seq for r in dead] == [r.seq for r in rows[:3]]
    assert all((r.attempts, r.last_error) == (3, "InternalError") for r in dead)
    pending = await store.outbox("CP1")
    assert [(r.seq, r.attempts, r.last_error) for r in pending] == [(rows[3].seq, 1, "Timeout")]
    assert (await store.outbox_summary())["dead_letters"] == 3

    assert await store.retry_dead(rows[0].seq) == 1
    assert await store.retry_dead(rows[0].seq) == 0  # no longer dead
    assert await store.retry_dead(10_000) == 0
    retried = await store.outbox("CP1")
    assert [r.seq for r in retried] == [rows[0].seq, rows[3].seq]  # back in seq order
    assert retried[0].attempts == 0
    assert await store.drop_dead(rows[1].seq) == 1
    assert await store.drop_dead() == 1
    assert await store.drop_dead() == 0
    assert await store.outbox("CP1", state="dead") == []
    assert await store.retry_dead() == 0


async def test_delivered_removes_only_that_message(store: Store) -> None:
    """A delivered message leaves the outbox; the others keep their order."""
    for n in range(1, 4):
        await store.append(item("CP1", n, key=f"k{n}"))
    rows = await store.outbox("CP1")
    await store.delivered(rows[1].seq)
    assert [r.message_id for r in await store.outbox("CP1")] == ["m1", "m3"]


# --------------------------------------------------------------------------- site list


async def test_replace_site_list_is_all_or_nothing(store: Store) -> None:
    """A site list replacement that fails part-way leaves the previous list whole."""
    old = {
        "OLD-1": AuthEntry(AuthStatus.Accepted),
        "OLD-2": AuthEntry(AuthStatus.Blocked, datetime(2030, 1, 1, tzinfo=UTC), "P"),
    }
    await store.replace_site_list(old)
    assert await store.load_site_list() == old
    # A second connection makes the insert of one row fail in the middle of the batch.
    with contextlib.closing(sqlite3.connect(store.path, isolation_level=None)) as db:
        db.execute(
            "CREATE TRIGGER refuse_bad BEFORE INSERT ON site_list WHEN NEW.key = 'BAD'"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    new = {
        "NEW-1": AuthEntry(AuthStatus.Accepted),
        "BAD": AuthEntry(AuthStatus.Accepted),
        "NEW-2": AuthEntry(AuthStatus.Accepted),
    }
    with pytest.raises(StoreError):
        await store.replace_site_list(new)
    assert await store.load_site_list() == old
    # The writer goes on: a later replacement commits.
    del new["BAD"]
    await store.replace_site_list(new)
    assert await store.load_site_list() == new
    await store.replace_site_list({})
    assert await store.load_site_list() == {}


# --------------------------------------------------------------------------- provisional ids


async def test_provisional_ids_continue_after_reopening(tmp_path: Path) -> None:
    """Provisional ids start at the reserved range and go on after a restart."""
    path = tmp_path / "ids.sqlite3"
    s = Store(path)
    await s.open()
    try:
        first, status, _ = await s.start_transaction(new_tx("CP1", "a"), start_item("CP1", "a"))
        second, _, _ = await s.start_transaction(new_tx("CP2", "b"), start_item("CP2", "b"))
        again, _, _ = await s.start_transaction(new_tx("CP1", "a"), start_item("CP1", "a"))
    finally:
        await s.close()
    assert (first, second, again, status) == (
        PROVISIONAL_START,
        PROVISIONAL_START + 1,
        PROVISIONAL_START,
        "Accepted",
    )
    s = Store(path)
    await s.open()
    try:
        third, _, _ = await s.start_transaction(new_tx("CP1", "c"), start_item("CP1", "c"))
        assert third == PROVISIONAL_START + 2
        rows = await s.outbox()
        assert [(r.action, r.tx_id) for r in rows] == [
            ("StartTransaction", first),
            ("StartTransaction", second),
            ("StartTransaction", third),
        ]
    finally:
        await s.close()


async def test_provisional_ids_are_not_reused_after_mappings_are_purged(tmp_path: Path) -> None:
    """R41: after delivered mappings are forgotten and the store reopens, ids still go on."""
    path = tmp_path / "purge.sqlite3"
    s = Store(path)
    await s.open()
    try:
        used, _, _ = await s.start_transaction(new_tx("CP1", "a"), start_item("CP1", "a"))
        await s.apply(s.map_transaction("CP1", used, 42), s.close_transaction("CP1", used))
        await s.purge_mappings(time.time() + 1)  # the grace period has passed
        assert await s.transactions_of("CP1") == []
    finally:
        await s.close()
    s = Store(path)
    await s.open()
    try:
        after, _, _ = await s.start_transaction(new_tx("CP1", "b"), start_item("CP1", "b"))
    finally:
        await s.close()
    assert after > used, f"provisional id {after} handed out again after restart"


# --------------------------------------------------------------------------- property


_messages = st.lists(
    st.tuples(
        st.sampled_from(["CP1", "CP2", "CP3"]),
        st.sampled_from(["StartTransaction", "MeterValues", "StopTransaction"]),
        st.one_of(st.none(), st.sampled_from(["k1", "k2", "k3", "k4"])),
        st.text(max_size=30),
    ),
    max_size=40,
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=_messages, chunk=st.integers(min_value=1, max_value=8))
async def test_outbox_returns_what_was_appended_in_order_once(
    messages: list[tuple[str, str, str | None, str]], chunk: int
) -> None:
    """Property: the outbox holds each appended message in order, but for a retry: a
    message with the dedupe key of its charger's last keyed message."""
    with tempfile.TemporaryDirectory() as tmp:
        s = Store(Path(tmp) / "p.sqlite3")
        await s.open()
        try:
            items = [
                OutboxItem(
                    identity,
                    action,
                    f"id{n}",
                    json.dumps([CALL, f"id{n}", action, {"text": text}]),
                    n,
                    key,
                )
                for n, (identity, action, key, text) in enumerate(messages)
            ]
            # Appended in groups of concurrent writers, in list order.
            for start in range(0, len(items), chunk):
                await asyncio.gather(*(s.append(i) for i in items[start : start + chunk]))
            last: dict[str, str] = {}
            expected: list[OutboxItem] = []
            for i in items:
                if i.dedupe_key is not None:
                    if last.get(i.identity) == i.dedupe_key:
                        continue
                    last[i.identity] = i.dedupe_key
                expected.append(i)
            rows = await s.outbox(limit=1000)
            got = [(r.identity, r.action, r.message_id, r.frame, r.tx_id) for r in rows]
            assert got == [(i.identity, i.action, i.message_id, i.frame, i.tx_id) for i in expected]
            for identity in ("CP1", "CP2", "CP3"):
                mine = [r.message_id for r in await s.outbox(identity)]
                assert mine == [i.message_id for i in expected if i.identity == identity]
        finally:
            await s.close()


# --------------------------------------------------------------------------- F7


def _call(message_id: str, action: str, payload: dict[str, Any]) -> str:
    return json.dumps([CALL, message_id, action, payload], separators=(",", ":"))


async def _send(raw: RawCharger, text: str, timeout: float = 10.0) -> list[Any]:
    message_id = json.loads(text)[1]
    await raw.send(text)
    async with asyncio.timeout(timeout):
        while True:
            msg = await raw.recv_json(timeout)
            if msg[0] != CALL and msg[1] == message_id:
                return list(msg)


async def test_locked_store_answers_internal_error_and_recovers(
    controller_factory: ControllerFactory,
) -> None:
    """F7: while another connection holds the write lock, transaction calls get InternalError
    within the busy timeout and nothing is acked; once released, the retries are stored once."""
    busy_ms = 300
    ctl = await controller_factory(
        csms={"url": "ws://127.0.0.1:1"},
        uplink={"reconnect_min": 0.1, "reconnect_max": 0.3, "reconnect_jitter": 0.05},
        store={"busy_timeout_ms": busy_ms},
        policy={"allow_offline_tx_for_unknown_id": True},
    )
    start = _call(
        "s1",
        "StartTransaction",
        {"connectorId": 1, "idTag": "CARD", "meterStart": 100, "timestamp": STAMP},
    )
    async with RawCharger(controller_url(ctl.listen_port), "CP1") as raw:
        lock = sqlite3.connect(ctl.store.path, isolation_level=None, timeout=5)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            began = time.monotonic()
            refused = await _send(raw, start)
            took = time.monotonic() - began
            assert refused[0] == CALLERROR, refused
            assert refused[2] == "InternalError"
            assert took < busy_ms / 1000 + 2.0
            meter = _call(
                "m1",
                "MeterValues",
                {
                    "connectorId": 1,
                    "meterValue": [{"timestamp": STAMP, "sampledValue": [{"value": "1"}]}],
                },
            )
            refused_meter = await _send(raw, meter)
            assert refused_meter[0] == CALLERROR
            assert refused_meter[2] == "InternalError"
            status = _call(
                "n1",
                "StatusNotification",
                {"connectorId": 1, "errorCode": "NoError", "status": "Charging"},
            )
            refused_status = await _send(raw, status)
            assert refused_status[0] == CALLERROR
            assert refused_status[2] == "InternalError"
            # Answers that need no write still come while the writer is locked out.
            heartbeat = await _send(raw, _call("h1", "Heartbeat", {}))
            assert heartbeat[0] == CALLRESULT
            authorize = await _send(raw, _call("a1", "Authorize", {"idTag": "CARD"}))
            assert authorize[0] == CALLRESULT
            assert authorize[2]["idTagInfo"]["status"] == "Accepted"
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert await ctl.store.outbox("CP1") == []  # nothing acked, nothing kept
        assert await ctl.store.connector_statuses("CP1") == []

        accepted = await _send(raw, start)  # the charger's retry, same frame
        assert accepted[0] == CALLRESULT, accepted
        tx_id = accepted[2]["transactionId"]
        assert tx_id >= PROVISIONAL_START
        again = await _send(raw, start)
        assert again[2]["transactionId"] == tx_id
        assert (await _send(raw, meter))[0] == CALLRESULT
        assert (await _send(raw, status))[0] == CALLRESULT
    rows = await ctl.store.outbox("CP1")
    assert [(r.action, r.frame) for r in rows] == [
        ("StartTransaction", start),
        ("MeterValues", meter),
    ]
    assert rows[0].tx_id == tx_id
    (kept,) = await ctl.store.connector_statuses("CP1")
    assert (kept["status"], kept["frame"]) == ("Charging", status)
    assert await ctl.store.integrity_check() == "ok"
