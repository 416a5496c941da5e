"""The store: one SQLite file in WAL mode.

One owner writes: every change goes through :meth:`Store._write`, which a single writer
task hands, batch by batch, to one writer thread and its own connection: all the changes
waiting at that moment are committed in one transaction with one fsync (group commit,
``synchronous=FULL``), in one hop to the thread whatever the batch size. A change is
durable when its ``await`` returns; the offline responder answers a charger only after
that. Reads go through aiosqlite on a second, read-only connection and see committed
data only. Every read of the outbox is ``ORDER BY seq``.

Tables: ``outbox`` (per-charger transaction messages, dead letters kept with
``state='dead'``; indexed by bucket, see :data:`OUTBOX_BUCKETS`; each charger's last
dedupe key in ``outbox_last``), ``transactions`` (provisional 1.6 ids, their CSMS ids),
the site local list, the chargers' own local lists, the authorization cache, the
charger registry (last BootNotification, last status per connector) and ``meta``. The
schema version is ``PRAGMA user_version``; :data:`MIGRATIONS` brings any older file up
to date.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import sqlite3
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite

from config.logging import get_logger
from policies.authorization import AuthEntry, AuthStatus
from proxy.crashpoints import armed, crashpoint

#: The crash tests' point between the writes and the COMMIT: armed, every group commit
#: takes the explicit transaction (the outbox-only commit has no such moment); any
#: other point leaves the production path as it is.
_CRASH_BEFORE_COMMIT = armed("before_commit")

MIGRATIONS: tuple[str, ...] = (
    # version 1
    """
    CREATE TABLE outbox(
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        identity TEXT NOT NULL,
        action TEXT NOT NULL,
        message_id TEXT NOT NULL,
        frame TEXT NOT NULL,
        tx_id INTEGER,
        dedupe_key TEXT,
        created REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'pending',
        last_error TEXT,
        offline INTEGER NOT NULL DEFAULT 1,
        UNIQUE(identity, dedupe_key)
    );
    CREATE INDEX outbox_by_charger ON outbox(identity, state, seq);
    CREATE TABLE transactions(
        provisional INTEGER PRIMARY KEY,
        identity TEXT NOT NULL,
        dedupe_key TEXT NOT NULL,
        id_key TEXT NOT NULL,
        connector INTEGER NOT NULL,
        meter_start INTEGER NOT NULL,
        started TEXT NOT NULL,
        status TEXT NOT NULL,
        answer TEXT,
        real INTEGER,
        stopped INTEGER NOT NULL DEFAULT 0,
        closed_at REAL,
        deauthorized INTEGER NOT NULL DEFAULT 0,
        cap_wh INTEGER,
        cap_applied INTEGER NOT NULL DEFAULT 0,
        UNIQUE(identity, dedupe_key)
    );
    CREATE TABLE site_list(
        key TEXT PRIMARY KEY, status TEXT NOT NULL, expiry TEXT, parent TEXT
    );
    CREATE TABLE charger_lists(
        identity TEXT NOT NULL, key TEXT NOT NULL, status TEXT NOT NULL, expiry TEXT,
        parent TEXT, PRIMARY KEY(identity, key)
    );
    CREATE TABLE charger_list_versions(identity TEXT PRIMARY KEY, version INTEGER NOT NULL);
    CREATE TABLE auth_cache(
        key TEXT PRIMARY KEY, status TEXT NOT NULL, expiry TEXT, parent TEXT,
        updated REAL NOT NULL
    );
    CREATE TABLE chargers(
        identity TEXT PRIMARY KEY,
        ocpp_version TEXT,
        boot_frame TEXT,
        boot_at REAL,
        boot_replay INTEGER NOT NULL DEFAULT 0,
        accepted INTEGER NOT NULL DEFAULT 0,
        last_seen REAL
    );
    CREATE TABLE connector_status(
        identity TEXT NOT NULL, connector INTEGER NOT NULL, frame TEXT NOT NULL,
        status TEXT, updated REAL NOT NULL, replay INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY(identity, connector)
    );
    CREATE TABLE station_transactions(
        identity TEXT NOT NULL,
        transaction_id TEXT NOT NULL,
        id_key TEXT,
        evse INTEGER,
        connector INTEGER,
        meter_start REAL,
        status TEXT,
        ended INTEGER NOT NULL DEFAULT 0,
        deauthorized INTEGER NOT NULL DEFAULT 0,
        cap_wh INTEGER,
        cap_applied INTEGER NOT NULL DEFAULT 0,
        updated REAL NOT NULL,
        PRIMARY KEY(identity, transaction_id)
    );
    CREATE TABLE credentials(
        identity TEXT PRIMARY KEY, credential TEXT NOT NULL, source TEXT NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE INDEX charger_lists_by_key ON charger_lists(key);
    """,
    # version 2: transactions the CSMS accepted online, for the site-wide ConcurrentTx
    # check across restarts (tx_id keeps its type: a 1.6 integer or a 2.0.1 string)
    """
    CREATE TABLE charging_online(
        identity TEXT NOT NULL,
        tx_id NOT NULL,
        id_key TEXT NOT NULL,
        since REAL NOT NULL,
        PRIMARY KEY(identity, tx_id)
    )
    """,
    # version 3: the outbox without its unique (identity, dedupe_key) index, and indexed
    # by bucket (a hash of the identity) rather than by charger; a retry is recognised
    # by its charger's last dedupe key (outbox_last, kept by a trigger). The table is
    # rebuilt (a table constraint cannot be dropped), seq values and the AUTOINCREMENT
    # high-water mark kept. lc_bucket is outbox_bucket, given to the migrating
    # connection.
    """
    CREATE TABLE outbox_v3(
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        identity TEXT NOT NULL,
        action TEXT NOT NULL,
        message_id TEXT NOT NULL,
        frame TEXT NOT NULL,
        tx_id INTEGER,
        dedupe_key TEXT,
        created REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'pending',
        last_error TEXT,
        offline INTEGER NOT NULL DEFAULT 1,
        bucket INTEGER NOT NULL
    );
    INSERT INTO outbox_v3(seq, identity, action, message_id, frame, tx_id, dedupe_key,
        created, attempts, state, last_error, offline, bucket)
        SELECT seq, identity, action, message_id, frame, tx_id, dedupe_key, created,
        attempts, state, last_error, offline, lc_bucket(identity) FROM outbox ORDER BY seq;
    DELETE FROM sqlite_sequence WHERE name = 'outbox_v3';
    INSERT INTO sqlite_sequence(name, seq)
        SELECT 'outbox_v3', seq FROM sqlite_sequence WHERE name = 'outbox';
    DROP TABLE outbox;
    ALTER TABLE outbox_v3 RENAME TO outbox;
    CREATE INDEX outbox_by_bucket ON outbox(bucket, state, seq, identity);
    CREATE TABLE outbox_last(identity TEXT PRIMARY KEY, dedupe_key TEXT NOT NULL);
    INSERT INTO outbox_last(identity, dedupe_key)
        SELECT identity, dedupe_key FROM (
            SELECT identity, dedupe_key, MAX(seq) FROM outbox
            WHERE dedupe_key IS NOT NULL GROUP BY identity
        );
    CREATE TRIGGER outbox_last_key AFTER INSERT ON outbox WHEN new.dedupe_key IS NOT NULL
    BEGIN
        INSERT INTO outbox_last(identity, dedupe_key) VALUES (new.identity, new.dedupe_key)
            ON CONFLICT(identity) DO UPDATE SET dedupe_key = excluded.dedupe_key;
    END
    """,
    # version 4: the connector of a transaction started online, so that a new start or
    # an Available on that connector ends it for ConcurrentTx when its stop never came;
    # the status of the CSMS's last answer to a charger's BootNotification (the offline
    # answer follows it: a charger the CSMS keeps Pending or Rejected is not Accepted)
    """
    ALTER TABLE charging_online ADD COLUMN connector INTEGER;
    ALTER TABLE chargers ADD COLUMN csms_boot_status TEXT;
    """,
)

#: Outbox messages are indexed by (bucket, state, seq): a group commit of a site-wide
#: outage, one message per charger, then writes at most one index page per bucket
#: (appended at its end), where an index by charger wrote one page per message (2.4 MB
#: of WAL for 280 messages with the former unique index, 630 KB now). Reading one
#: charger's messages scans its bucket's, about 1/32 of the site's.
OUTBOX_BUCKETS = 32


def outbox_bucket(identity: str) -> int:
    """The outbox bucket of a charger (stable across processes and versions)."""
    return zlib.crc32(identity.encode()) % OUTBOX_BUCKETS


class StoreError(Exception):
    """The store could not commit (disk full, locked, I/O error)."""


@dataclass(slots=True)  # not frozen: built for every stored message, frozen costs twice
class OutboxItem:
    """A charger message to be kept until the CSMS has it."""

    identity: str
    action: str
    message_id: str
    frame: str
    tx_id: int | None = None
    dedupe_key: str | None = None
    #: Whether the message was sent while the uplink was down (not while draining).
    offline: bool = True


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    identity: str
    action: str
    message_id: str
    frame: str
    tx_id: int | None
    created: float
    attempts: int
    state: str
    last_error: str | None
    offline: int


@dataclass(frozen=True, slots=True)
class NewTransaction:
    """An offline StartTransaction: the provisional id is given by the store."""

    identity: str
    dedupe_key: str
    id_key: str
    connector: int
    meter_start: int
    started: str
    #: The authorization status answered to the charger, and the whole idTagInfo (JSON).
    status: str
    answer: str = ""


Statement = tuple[str, Sequence[Any]]


@dataclass(slots=True)
class _Change:
    statements: list[Statement]
    #: A waiter's future, or a callback called with None once the statements are
    #: durable, or with the StoreError that kept them from being stored.
    done: asyncio.Future[None] | Callable[[StoreError | None], None]


# A message is not stored again when its dedupe key is the one its charger's last keyed
# message had (the charger's retry of the call it got no answer for: a charger has one
# call open, so a retry is always of its latest); outbox_last keeps those keys, filled
# by a trigger. A unique index would do the same for every message ever kept, at the
# cost of one more index page written per message, which for a site-wide outage (every
# row of a group commit a different charger) nearly doubles what each commit writes.
_OUTBOX_INSERT = (
    "INSERT INTO outbox(identity, action, message_id, frame, tx_id, dedupe_key, created,"
    " offline, bucket) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 WHERE ?6 IS NULL OR NOT EXISTS"
    " (SELECT 1 FROM outbox_last WHERE identity = ?1 AND dedupe_key = ?6)"
)
# A run of outbox messages in one statement: one step of SQLite for the whole run, so
# the writer thread takes the GIL twice per group commit instead of once per row (with
# the event loop busy, every retake waits for it: a convoy that made commits of a few
# hundred rows last tens of milliseconds). The rows are bound as a VALUES list (each
# row's place in the run as its last column, the order they are inserted in), padded
# with rows of NULLs up to a few sizes (see _padded_rows) so that a few statement texts
# serve every size (SQLite parses each once; the sqlite3 module keeps them prepared). Retries
# within the run are left out beforehand (see _fresh_rows); outbox_last is checked for
# a charger's first keyed message of the run only (column10 = 1).
_ROWS_STEP = 64
#: Runs shorter than _ROWS_STEP are padded to a multiple of this: a commit of 20 rows
#: bound as 64 cost 0.53 ms of the writer thread, as 24 0.40 ms.
_ROWS_STEP_SMALL = 8
#: Rows per statement at most (11 parameters a row, under SQLite's 32,766).
_ROWS_MAX = 2048
_NULL_ROW = (None,) * 11


def _padded_rows(rows: int) -> int:
    """The size of statement a run of ``rows`` outbox rows is bound to (40 sizes in
    all, within the sqlite3 module's cache of 128 prepared statements)."""
    step = _ROWS_STEP_SMALL if rows < _ROWS_STEP else _ROWS_STEP
    return -(-rows // step) * step


@functools.cache
def _outbox_insert_many(rows: int) -> str:
    """The statement inserting a run of ``rows`` outbox rows (see above)."""
    values = ",".join(["(?,?,?,?,?,?,?,?,?,?,?)"] * rows)
    return (
        "INSERT INTO outbox(identity, action, message_id, frame, tx_id, dedupe_key, created,"  # noqa: S608 - placeholders only
        " offline, bucket) SELECT column1, column2, column3, column4, column5, column6,"
        f" column7, column8, column9 FROM (VALUES {values}) WHERE column1 IS NOT NULL AND"
        " (column6 IS NULL OR column10 = 0 OR NOT EXISTS"
        " (SELECT 1 FROM outbox_last WHERE identity = column1 AND dedupe_key = column6))"
        " ORDER BY column11"
    )


def _fresh_rows(statements: Sequence[Statement]) -> list[tuple[Any, ...]]:
    """The rows of a run of outbox inserts for :func:`_outbox_insert_many`: a retry of
    the message just before it (same charger, same key) left out, each charger's first
    keyed row flagged to be checked against what is stored, each row's place last."""
    last: dict[Any, Any] = {}
    rows: list[tuple[Any, ...]] = []
    for _, params in statements:
        identity, key = params[0], params[5]
        if key is None:
            rows.append((*params, 0, len(rows)))
            continue
        if identity in last:
            if last[identity] == key:
                continue
            rows.append((*params, 0, len(rows)))
        else:
            rows.append((*params, 1, len(rows)))
        last[identity] = key
    return rows


def _insert_outbox(con: sqlite3.Connection, statements: Sequence[Statement]) -> None:
    """In the writer thread: a run of outbox inserts, as one statement per
    :data:`_ROWS_MAX` rows."""
    if len(statements) == 1:
        con.execute(_OUTBOX_INSERT, statements[0][1])
        return
    rows = _fresh_rows(statements)
    for start in range(0, len(rows), _ROWS_MAX):
        chunk = rows[start : start + _ROWS_MAX]
        size = _padded_rows(len(chunk))
        params = list(itertools.chain.from_iterable(chunk))
        params.extend(_NULL_ROW * (size - len(chunk)))
        con.execute(_outbox_insert_many(size), params)


_OUTBOX_COLUMNS = (
    "seq, identity, action, message_id, frame, tx_id, created, attempts, state, last_error, offline"
)


def _entry_row(entry: AuthEntry) -> tuple[str, str | None, str | None]:
    expiry = entry.expiry.isoformat() if entry.expiry is not None else None
    return (entry.status.value, expiry, entry.parent_id_tag)


def _row_entry(status: str, expiry: str | None, parent: str | None) -> AuthEntry:
    return AuthEntry(AuthStatus(status), datetime.fromisoformat(expiry) if expiry else None, parent)


class Store:
    """The controller's durable state."""

    def __init__(
        self, path: Path, *, busy_timeout_ms: int = 2000, tx_id_start: int = 2_000_000_000
    ):
        self.path = Path(path)
        self._log = get_logger(component="store")
        self._busy_timeout_ms = busy_timeout_ms
        self._tx_id_start = tx_id_start
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        #: Changes waiting for the next group commit; the writer task waits on
        #: ``_wakeup`` while there are none.
        self._pending: deque[_Change] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._wconn: sqlite3.Connection | None = None
        self._next_tx: int = tx_id_start
        #: One StartTransaction at a time per charger (its retries are recognised);
        #: chargers do not wait for each other.
        self._tx_locks: dict[str, asyncio.Lock] = {}
        #: Called with the seconds each group commit took (metrics).
        self.on_commit: Callable[[float], None] | None = None

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Open (or create) the store and bring its schema up to date. A store that
        cannot be opened whole (not an SQLite file, a newer schema, a disk error) is
        closed again before the error is raised: nothing half-open keeps its threads."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(self.path, isolation_level=None)
        self._db = db
        try:
            await self._open_rest(db)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.close()
            self._db = self._reader = None
            raise

    async def _open_rest(self, db: aiosqlite.Connection) -> None:
        await db.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA foreign_keys=ON")
        await self._migrate(db)
        self._reader = await aiosqlite.connect(
            f"file:{self.path}?mode=ro", uri=True, isolation_level=None
        )
        await self._reader.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        async with db.execute(
            "SELECT MAX(provisional) FROM transactions"
            " UNION ALL SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'next_tx'"
        ) as cur:
            tops = [r[0] for r in await cur.fetchall() if r[0] is not None]
        # Never hand out an id twice, even after old mappings were purged.
        self._next_tx = max([self._tx_id_start, *(t + 1 for t in tops[:1]), *tops[1:]])
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open_writer)
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        await db.create_function("lc_bucket", 1, outbox_bucket, deterministic=True)
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
            started = time.perf_counter()
            await db.executescript(f"BEGIN; {script}; PRAGMA user_version={target}; COMMIT;")
            if version:  # not for a new file
                self._log.info(
                    "store_migrated",
                    version=target,
                    seconds=round(time.perf_counter() - started, 3),
                )

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
            left = list(self._pending)
            self._pending.clear()
            self._settle(left, StoreError("the store is closing"))
        if self._executor is not None:
            # The writer thread finishes a commit under way, then closes its connection.
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close_writer)
            self._executor.shutdown(wait=True)
            self._executor = None
        for conn in (self._reader, self._db):
            if conn is not None:
                await conn.close()
        if self._db is not None:
            # A clean close checkpoints the WAL into the main file.
            self._db = None
            self._reader = None

    async def pragmas(self) -> dict[str, Any]:
        """The settings that durability depends on, as SQLite reports them on the
        connection every change is committed on."""
        self._require()
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._writer_pragmas
        )

    def _writer_pragmas(self) -> dict[str, Any]:
        con = self._wconn
        if con is None:
            raise StoreError("the store is not open")
        out: dict[str, Any] = {}
        for name in ("journal_mode", "synchronous", "busy_timeout", "user_version"):
            row = con.execute(f"PRAGMA {name}").fetchone()
            out[name] = row[0] if row else None
        return out

    async def integrity_check(self) -> str:
        async with self._require().execute("PRAGMA integrity_check") as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else "no answer"

    def _require(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    def _read(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreError("the store is not open")
        return self._reader

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Every row of a query on the reader, run and finished in one step.

        Executing and fetching in one call leaves no statement open on the reader even
        if the caller is cancelled meanwhile: an open statement would hold a read
        transaction, and every later read would see that old snapshot.
        """
        return list(await self._read().execute_fetchall(sql, params))

    async def _row(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self._rows(sql, params)
        return rows[0] if rows else None

    # -- the single writer ---------------------------------------------------------

    async def _write(self, statements: list[Statement]) -> None:
        """Commit ``statements`` as part of the next group commit; durable on return."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(_Change(statements, done))
        await done

    def _enqueue(self, change: _Change) -> None:
        """Hand a change to the next group commit (StoreError when the store is not open)."""
        if self._writer is None or self._writer.done():
            raise StoreError("the store is not open")
        self._pending.append(change)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)

    def _open_writer(self) -> None:
        """In the writer thread: the connection that every change is committed on."""
        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        con.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        self._wconn = con

    def _close_writer(self) -> None:
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None

    def _commit_batch(self, statements: list[Statement]) -> None:
        """In the writer thread: one transaction, one fsync, for everything waiting.

        Consecutive runs of the same SQL go as one executemany.
        """
        con = self._wconn
        if con is None:
            raise StoreError("the store is not open")
        if (
            not _CRASH_BEFORE_COMMIT
            and len(statements) <= _ROWS_MAX
            and all(st[0] is _OUTBOX_INSERT for st in statements)
        ):
            # Outbox messages only (the offline steady state): one statement, its own
            # transaction, committed (and synced) within the one step.
            _insert_outbox(con, statements)
            return
        con.execute("BEGIN IMMEDIATE")
        try:
            i, n = 0, len(statements)
            while i < n:
                sql = statements[i][0]
                j = i + 1
                while j < n and statements[j][0] == sql:
                    j += 1
                if sql is _OUTBOX_INSERT:
                    _insert_outbox(con, statements[i:j])
                elif j - i == 1:
                    con.execute(sql, statements[i][1])
                else:
                    con.executemany(sql, [st[1] for st in statements[i:j]])
                i = j
            if _CRASH_BEFORE_COMMIT:
                crashpoint("before_commit")
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                con.execute("ROLLBACK")
            raise

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        pending = self._pending
        #: A batch committed while more changes waited: its waiters are told once the
        #: next commit is under way, so that answering them and committing overlap.
        told_later: list[_Change] | None = None
        while True:
            if not pending:
                self._wakeup = loop.create_future()
                await self._wakeup
            batch = list(pending)
            pending.clear()
            started = time.perf_counter()
            statements = [st for change in batch for st in change.statements]
            # One hop to the writer thread per batch, whatever its size.
            commit = loop.run_in_executor(self._executor, self._commit_batch, statements)
            if told_later is not None:
                self._settle(told_later, None)
                told_later = None
            try:
                await commit
            except asyncio.CancelledError:
                self._settle(batch, StoreError("the store is closing"))
                raise
            except Exception as exc:
                self._settle(batch, StoreError(f"commit failed: {exc}"))
                continue
            if self.on_commit is not None:
                self.on_commit(time.perf_counter() - started)
            if pending:
                told_later = batch
            else:
                self._settle(batch, None)

    def _settle(self, batch: list[_Change], error: StoreError | None) -> None:
        """Tell every change of a batch how its commit went."""
        for change in batch:
            done = change.done
            if isinstance(done, asyncio.Future):
                if done.done():
                    continue
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)
                continue
            try:
                done(error)
            except Exception as exc:  # a waiter's bug must not stop the writer
                self._log.error("store_callback_failed", error=repr(exc), exc_info=exc)

    # -- outbox ---------------------------------------------------------------------

    async def append(self, item: OutboxItem, *extra: Statement) -> None:
        """Commit one outbox message (and any ``extra`` statements with it).

        A message whose ``dedupe_key`` is the one of the charger's last keyed message is
        not stored again (the charger's retry of the call it got no answer for).
        """
        await self._write([(_OUTBOX_INSERT, self._outbox_params(item)), *extra])

    def append_soon(self, item: OutboxItem, then: Callable[[StoreError | None], None]) -> None:
        """:meth:`append` without waiting: ``then`` is called from the group commit,
        with None once the message is durable or with the error that kept it from
        being stored (raises StoreError at once when the store is not open)."""
        self._enqueue(_Change([(_OUTBOX_INSERT, self._outbox_params(item))], then))

    @staticmethod
    def _outbox_params(item: OutboxItem) -> tuple[Any, ...]:
        return (
            item.identity,
            item.action,
            item.message_id,
            item.frame,
            item.tx_id,
            item.dedupe_key,
            time.time(),
            int(item.offline),
            outbox_bucket(item.identity),
        )

    async def start_transaction(self, tx: NewTransaction, item: OutboxItem) -> tuple[int, str, str]:
        """Commit an offline StartTransaction; its provisional id and answered status.

        A retry of a StartTransaction already stored (same dedupe key) gets the id and
        the status answered the first time.
        """
        lock = self._tx_locks.setdefault(tx.identity, asyncio.Lock())
        async with lock:
            existing = await self.transaction_by_key(tx.identity, tx.dedupe_key)
            if existing is not None:
                return existing
            provisional = self._next_tx
            self._next_tx += 1
            await self._write(
                [
                    (
                        "INSERT INTO meta(key, value) VALUES ('next_tx', ?)"
                        " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (str(self._next_tx),),
                    ),
                    (
                        "INSERT INTO transactions(provisional, identity, dedupe_key, id_key,"
                        " connector, meter_start, started, status, answer)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            provisional,
                            tx.identity,
                            tx.dedupe_key,
                            tx.id_key,
                            tx.connector,
                            tx.meter_start,
                            tx.started,
                            tx.status,
                            tx.answer,
                        ),
                    ),
                    (
                        _OUTBOX_INSERT,
                        self._outbox_params(
                            OutboxItem(
                                item.identity,
                                item.action,
                                item.message_id,
                                item.frame,
                                provisional,
                                item.dedupe_key,
                            )
                        ),
                    ),
                ]
            )
            return provisional, tx.status, tx.answer

    async def transaction_by_key(
        self, identity: str, dedupe_key: str
    ) -> tuple[int, str, str] | None:
        """(provisional id, status, idTagInfo JSON) of a stored StartTransaction."""
        row = await self._row(
            "SELECT provisional, status, answer FROM transactions"
            " WHERE identity = ? AND dedupe_key = ?",
            (identity, dedupe_key),
        )
        return (int(row[0]), str(row[1]), str(row[2] or "")) if row else None

    @staticmethod
    def stop_transaction(identity: str, provisional: int) -> Statement:
        """The transaction ended offline (its StopTransaction is in the outbox)."""
        return (
            "UPDATE transactions SET stopped = 1 WHERE identity = ? AND provisional = ?",
            (identity, provisional),
        )

    async def running_transactions(self) -> list[tuple[str, int | str, str, int | None]]:
        """(identity, transaction id, id key, 1.6 connector) of every transaction whose
        id is charging: offline starts not yet stopped (1.6 provisional ids, 2.0.1
        station ids) and the starts the CSMS accepted online and no stop has ended yet."""
        rows = await self._rows(
            "SELECT identity, provisional, id_key, connector FROM transactions"
            " WHERE stopped = 0 AND status = 'Accepted'"
            " UNION ALL SELECT identity, transaction_id, id_key, NULL FROM station_transactions"
            " WHERE ended = 0 AND status = 'Accepted' AND id_key IS NOT NULL"
            " UNION ALL SELECT identity, tx_id, id_key, connector FROM charging_online"
        )
        return [(str(r[0]), r[1], str(r[2]), r[3]) for r in rows]

    @staticmethod
    def online_started(
        identity: str, tx_id: int | str, id_key: str, connector: int | None = None
    ) -> Statement:
        """The CSMS accepted a transaction online: its id is charging until it stops."""
        return (
            "INSERT INTO charging_online(identity, tx_id, id_key, since, connector)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(identity, tx_id) DO UPDATE SET id_key = excluded.id_key",
            (identity, tx_id, id_key, time.time(), connector),
        )

    @staticmethod
    def station_ended(identity: str, transaction_id: str) -> Statement:
        """A 2.0.1 transaction recorded offline ended (its Ended event went up live)."""
        return (
            "UPDATE station_transactions SET ended = 1, updated = ?"
            " WHERE identity = ? AND transaction_id = ?",
            (time.time(), identity, transaction_id),
        )

    @staticmethod
    def online_stopped(identity: str, tx_id: int | str) -> Statement:
        """A transaction ended (online or offline): no longer charging."""
        return (
            "DELETE FROM charging_online WHERE identity = ? AND tx_id = ?",
            (identity, tx_id),
        )

    async def outbox(
        self, identity: str | None = None, *, state: str = "pending", limit: int = 1000
    ) -> list[OutboxRow]:
        """Stored messages, oldest first."""
        sql = f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE state = ?"  # noqa: S608 - a constant column list
        params: list[Any] = [state]
        if identity is not None:
            sql += " AND bucket = ? AND identity = ?"
            params += [outbox_bucket(identity), identity]
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        rows = await self._rows(sql, params)
        return [OutboxRow(*r) for r in rows]

    async def depths(self) -> dict[str, int]:
        """Pending outbox messages per charger."""
        rows = await self._rows(
            "SELECT identity, COUNT(*) FROM outbox WHERE state = 'pending' GROUP BY identity"
        )
        return {str(r[0]): int(r[1]) for r in rows}

    async def outbox_summary(self) -> dict[str, float]:
        """Outbox depth, the age of its oldest message (s) and the dead letters."""
        row = await self._row(
            "SELECT COUNT(*) FILTER (WHERE state = 'pending'),"
            " MIN(created) FILTER (WHERE state = 'pending'),"
            " COUNT(*) FILTER (WHERE state = 'dead') FROM outbox"
        )
        depth, oldest, dead = row if row else (0, None, 0)
        return {
            "outbox_depth": depth or 0,
            "outbox_oldest_age_seconds": time.time() - oldest if oldest else 0.0,
            "dead_letters": dead or 0,
        }

    async def outbox_depth(self, identity: str | None = None) -> int:
        sql = "SELECT COUNT(*) FROM outbox WHERE state = 'pending'"
        params: tuple[Any, ...] = ()
        if identity is not None:
            sql += " AND bucket = ? AND identity = ?"
            params = (outbox_bucket(identity), identity)
        row = await self._row(sql, params)
        return int(row[0]) if row else 0

    async def apply(self, *statements: Statement) -> None:
        """Commit ``statements`` (built by this class's statement helpers) together."""
        await self._write(list(statements))

    async def delivered(self, seq: int, *extra: Statement) -> None:
        """The CSMS answered a stored message: remove it (with ``extra`` changes)."""
        await self._write([("DELETE FROM outbox WHERE seq = ?", (seq,)), *extra])

    async def refused(self, seq: int, transmissions: int, error: str, *, dead: bool) -> None:
        """The CSMS answered a stored message with a CALLERROR ``transmissions`` times."""
        await self._write(
            [
                (
                    "UPDATE outbox SET attempts = ?, last_error = ?, state = ? WHERE seq = ?",
                    (transmissions, error, "dead" if dead else "pending", seq),
                )
            ]
        )

    async def retry_dead(self, seq: int | None = None) -> int:
        """Put dead letters (one, or all) back in the outbox; how many."""
        count = await self._count_dead(seq)
        await self._write(
            [
                (
                    "UPDATE outbox SET state = 'pending', attempts = 0"
                    " WHERE state = 'dead' AND (? IS NULL OR seq = ?)",
                    (seq, seq),
                )
            ]
        )
        return count

    async def drop_dead(self, seq: int | None = None) -> int:
        """Delete dead letters (one, or all); how many."""
        count = await self._count_dead(seq)
        await self._write(
            [("DELETE FROM outbox WHERE state = 'dead' AND (? IS NULL OR seq = ?)", (seq, seq))]
        )
        return count

    async def _count_dead(self, seq: int | None) -> int:
        row = await self._row(
            "SELECT COUNT(*) FROM outbox WHERE state = 'dead' AND (? IS NULL OR seq = ?)",
            (seq, seq),
        )
        return int(row[0]) if row else 0

    @staticmethod
    def map_transaction(identity: str, provisional: int, real: int) -> Statement:
        return (
            "UPDATE transactions SET real = ? WHERE identity = ? AND provisional = ?",
            (real, identity, provisional),
        )

    @staticmethod
    def close_transaction(identity: str, provisional: int) -> Statement:
        return (
            "UPDATE transactions SET stopped = 1, closed_at = ? WHERE identity = ?"
            " AND provisional = ?",
            (time.time(), identity, provisional),
        )

    async def set_policy(
        self,
        identity: str,
        provisional: int,
        *,
        deauthorized: bool = False,
        cap_wh: int | None = None,
        cap_applied: bool = False,
    ) -> None:
        await self._write(
            [
                (
                    "UPDATE transactions SET deauthorized = MAX(deauthorized, ?),"
                    " cap_wh = COALESCE(?, cap_wh), cap_applied = MAX(cap_applied, ?)"
                    " WHERE identity = ? AND provisional = ?",
                    (int(deauthorized), cap_wh, int(cap_applied), identity, provisional),
                )
            ]
        )

    async def transactions_of(self, identity: str) -> list[dict[str, Any]]:
        """The offline transactions of a charger whose mapping is still needed."""
        rows = await self._rows(
            "SELECT provisional, real, stopped, deauthorized, cap_wh, cap_applied,"
            " meter_start, status, connector FROM transactions WHERE identity = ?"
            " ORDER BY provisional",
            (identity,),
        )
        keys = (
            "provisional",
            "real",
            "stopped",
            "deauthorized",
            "cap_wh",
            "cap_applied",
            "meter_start",
            "status",
            "connector",
        )
        return [dict(zip(keys, r, strict=True)) for r in rows]

    async def purge_mappings(self, older_than: float) -> None:
        """Forget mappings whose StopTransaction was delivered before ``older_than``."""
        await self._write(
            [
                (
                    "DELETE FROM transactions WHERE closed_at IS NOT NULL AND closed_at < ?",
                    (older_than,),
                )
            ]
        )

    async def rearm_boot(self, identity: str) -> bool:
        """Mark the charger's last BootNotification for replay again; False if none."""
        record = await self.charger(identity)
        if record is None or not record["boot_frame"]:
            return False
        await self._write([("UPDATE chargers SET boot_replay = 1 WHERE identity = ?", (identity,))])
        return True

    async def boot_replayed(self, identity: str, frame: str) -> None:
        await self._write(
            [
                (
                    "UPDATE chargers SET boot_replay = 0, accepted = 1,"
                    " csms_boot_status = 'Accepted' WHERE identity = ? AND boot_frame = ?",
                    (identity, frame),
                )
            ]
        )

    async def status_replayed(self, identity: str, connector: int, frame: str) -> None:
        await self._write(
            [
                (
                    "UPDATE connector_status SET replay = 0 WHERE identity = ? AND connector = ?"
                    " AND frame = ?",
                    (identity, connector, frame),
                )
            ]
        )

    # -- local lists and cache -------------------------------------------------------

    async def load_site_list(self) -> dict[str, AuthEntry]:
        rows = await self._rows("SELECT key, status, expiry, parent FROM site_list")
        return {str(r[0]): _row_entry(r[1], r[2], r[3]) for r in rows}

    async def replace_site_list(self, entries: dict[str, AuthEntry]) -> None:
        """Replace the whole site list in one transaction (all or nothing)."""
        statements: list[Statement] = [("DELETE FROM site_list", ())]
        statements.extend(
            (
                "INSERT INTO site_list(key, status, expiry, parent) VALUES (?, ?, ?, ?)",
                (key, *_entry_row(entry)),
            )
            for key, entry in entries.items()
        )
        await self._write(statements)

    async def charger_list_version(self, identity: str) -> int | None:
        """The version of the controller's copy of a charger's local list, if known."""
        row = await self._row(
            "SELECT version FROM charger_list_versions WHERE identity = ?", (identity,)
        )
        return int(row[0]) if row else None

    async def load_charger_list_versions(self) -> dict[str, int]:
        rows = await self._rows("SELECT identity, version FROM charger_list_versions")
        return {str(r[0]): int(r[1]) for r in rows}

    async def save_charger_list(
        self, identity: str, version: int | None, entries: dict[str, AuthEntry]
    ) -> None:
        statements: list[Statement] = [
            ("DELETE FROM charger_lists WHERE identity = ?", (identity,))
        ]
        statements.extend(
            (
                "INSERT INTO charger_lists(identity, key, status, expiry, parent)"
                " VALUES (?, ?, ?, ?, ?)",
                (identity, key, *_entry_row(entry)),
            )
            for key, entry in entries.items()
        )
        if version is not None:
            statements.append(
                (
                    "INSERT INTO charger_list_versions(identity, version) VALUES (?, ?)"
                    " ON CONFLICT(identity) DO UPDATE SET version = excluded.version",
                    (identity, version),
                )
            )
        await self._write(statements)

    async def auth_entries(
        self, identity: str, key: str, site_key: str | None = None
    ) -> tuple[AuthEntry | None, AuthEntry | None, AuthEntry | None]:
        """The charger's list entry, the site list entry and the cache entry for ``key``.

        The site list is keyed by the bare id (its CSV has no token type): ``site_key``
        when the charger's key carries a type (OCPP 2.0.1).
        """
        rows = await self._rows(
            "SELECT 0, status, expiry, parent FROM charger_lists WHERE identity = ? AND key = ?"
            " UNION ALL SELECT 1, status, expiry, parent FROM site_list WHERE key = ?"
            " UNION ALL SELECT 2, status, expiry, parent FROM auth_cache WHERE key = ?",
            (identity, key, site_key or key, key),
        )
        found: list[AuthEntry | None] = [None, None, None]
        for r in rows:
            found[int(r[0])] = _row_entry(r[1], r[2], r[3])
        return found[0], found[1], found[2]

    async def charger_list(self, identity: str) -> dict[str, AuthEntry]:
        rows = await self._rows(
            "SELECT key, status, expiry, parent FROM charger_lists WHERE identity = ?",
            (identity,),
        )
        return {str(r[0]): _row_entry(r[1], r[2], r[3]) for r in rows}

    async def load_cache(self) -> dict[str, AuthEntry]:
        rows = await self._rows("SELECT key, status, expiry, parent FROM auth_cache")
        return {str(r[0]): _row_entry(r[1], r[2], r[3]) for r in rows}

    async def cache_put(self, key: str, entry: AuthEntry) -> None:
        await self._write(
            [
                (
                    "INSERT INTO auth_cache(key, status, expiry, parent, updated)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET"
                    " status = excluded.status, expiry = excluded.expiry,"
                    " parent = excluded.parent, updated = excluded.updated",
                    (key, *_entry_row(entry), time.time()),
                )
            ]
        )

    async def cache_clear(self) -> None:
        await self._write([("DELETE FROM auth_cache", ())])

    # -- OCPP 2.0.1 transactions (ids assigned by the station) -------------------------

    @staticmethod
    def station_event(
        identity: str,
        transaction_id: str,
        *,
        id_key: str | None,
        evse: int | None,
        connector: int | None,
        meter_start: float | None,
        status: str | None,
        ended: bool,
    ) -> Statement:
        """Record what an offline TransactionEvent tells about its transaction."""
        return (
            "INSERT INTO station_transactions(identity, transaction_id, id_key, evse,"
            " connector, meter_start, status, ended, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(identity, transaction_id) DO UPDATE SET"
            " id_key = COALESCE(station_transactions.id_key, excluded.id_key),"
            " evse = COALESCE(station_transactions.evse, excluded.evse),"
            " connector = COALESCE(station_transactions.connector, excluded.connector),"
            " meter_start = COALESCE(station_transactions.meter_start, excluded.meter_start),"
            " status = COALESCE(excluded.status, station_transactions.status),"
            " ended = MAX(station_transactions.ended, excluded.ended),"
            " updated = excluded.updated",
            (
                identity,
                transaction_id,
                id_key,
                evse,
                connector,
                meter_start,
                status,
                int(ended),
                time.time(),
            ),
        )

    async def station_transaction(
        self, identity: str, transaction_id: str
    ) -> dict[str, Any] | None:
        row = await self._row(
            "SELECT transaction_id, id_key, evse, connector, meter_start, status, ended,"
            " deauthorized, cap_wh, cap_applied FROM station_transactions"
            " WHERE identity = ? AND transaction_id = ?",
            (identity, transaction_id),
        )
        if row is None:
            return None
        keys = (
            "transaction_id",
            "id_key",
            "evse",
            "connector",
            "meter_start",
            "status",
            "ended",
            "deauthorized",
            "cap_wh",
            "cap_applied",
        )
        return dict(zip(keys, row, strict=True))

    async def station_transactions_of(self, identity: str) -> list[dict[str, Any]]:
        rows = await self._rows(
            "SELECT transaction_id FROM station_transactions WHERE identity = ?", (identity,)
        )
        ids = [str(r[0]) for r in rows]
        out = []
        for tx in ids:
            row = await self.station_transaction(identity, tx)
            if row is not None:
                out.append(row)
        return out

    async def set_station_policy(
        self,
        identity: str,
        transaction_id: str,
        *,
        deauthorized: bool = False,
        cap_wh: int | None = None,
        cap_applied: bool = False,
    ) -> None:
        await self._write(
            [
                (
                    "UPDATE station_transactions SET deauthorized = MAX(deauthorized, ?),"
                    " cap_wh = COALESCE(?, cap_wh), cap_applied = MAX(cap_applied, ?)"
                    " WHERE identity = ? AND transaction_id = ?",
                    (int(deauthorized), cap_wh, int(cap_applied), identity, transaction_id),
                )
            ]
        )

    # -- credentials ---------------------------------------------------------------------

    async def credential(self, identity: str) -> tuple[str, str] | None:
        """The stored credential hash of a charger, as text, and where it came from."""
        row = await self._row(
            "SELECT credential, source FROM credentials WHERE identity = ?", (identity,)
        )
        return (str(row[0]), str(row[1])) if row else None

    async def save_credential(self, identity: str, credential: str, source: str) -> None:
        await self._write(
            [
                (
                    "INSERT INTO credentials(identity, credential, source, updated)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT(identity) DO UPDATE SET"
                    " credential = excluded.credential, source = excluded.source,"
                    " updated = excluded.updated",
                    (identity, credential, source, time.time()),
                )
            ]
        )

    # -- charger registry ------------------------------------------------------------

    async def record_boot(
        self,
        identity: str,
        version: str,
        frame: str,
        *,
        replay: bool,
        accepted: bool | None,
        csms_status: str | None = None,
    ) -> None:
        """Keep a charger's last BootNotification (``replay``: sent while offline) and,
        for one the CSMS answered, the status it answered."""
        await self._write(
            [
                (
                    "INSERT INTO chargers(identity, ocpp_version, boot_frame, boot_at,"
                    " boot_replay, accepted, last_seen, csms_boot_status)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(identity) DO UPDATE SET ocpp_version = excluded.ocpp_version,"
                    " boot_frame = excluded.boot_frame, boot_at = excluded.boot_at,"
                    " boot_replay = excluded.boot_replay,"
                    " accepted = MAX(chargers.accepted, excluded.accepted),"
                    " last_seen = excluded.last_seen,"
                    " csms_boot_status = COALESCE(excluded.csms_boot_status,"
                    " chargers.csms_boot_status)",
                    (
                        identity,
                        version,
                        frame,
                        time.time(),
                        int(replay),
                        int(bool(accepted)),
                        time.time(),
                        csms_status,
                    ),
                )
            ]
        )

    async def charger(self, identity: str) -> dict[str, Any] | None:
        row = await self._row(
            "SELECT identity, ocpp_version, boot_frame, boot_at, boot_replay, accepted,"
            " last_seen, csms_boot_status FROM chargers WHERE identity = ?",
            (identity,),
        )
        if row is None:
            return None
        keys = (
            "identity",
            "ocpp_version",
            "boot_frame",
            "boot_at",
            "boot_replay",
            "accepted",
            "last_seen",
            "csms_boot_status",
        )
        return dict(zip(keys, row, strict=True))

    async def record_status(
        self, identity: str, connector: int, status: str | None, frame: str, *, replay: bool
    ) -> None:
        """Keep the last StatusNotification per connector (``replay``: sent offline)."""
        await self._write(
            [
                (
                    "INSERT INTO connector_status(identity, connector, frame, status, updated,"
                    " replay) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(identity, connector)"
                    " DO UPDATE SET frame = excluded.frame, status = excluded.status,"
                    " updated = excluded.updated, replay = excluded.replay",
                    (identity, connector, frame, status, time.time(), int(replay)),
                )
            ]
        )

    async def connector_statuses(self, identity: str) -> list[dict[str, Any]]:
        rows = await self._rows(
            "SELECT connector, status, frame, updated, replay FROM connector_status"
            " WHERE identity = ? ORDER BY connector",
            (identity,),
        )
        return [
            {"connector": r[0], "status": r[1], "frame": r[2], "updated": r[3], "replay": r[4]}
            for r in rows
        ]

    async def identities(self) -> Iterable[str]:
        rows = await self._rows("SELECT identity FROM chargers ORDER BY identity")
        return [str(r[0]) for r in rows]

    # -- admin queries --

    async def outbox_counts(self) -> dict[str, tuple[int, int]]:
        """(pending, dead) outbox messages per charger."""
        rows = await self._rows(
            "SELECT identity, COUNT(*) FILTER (WHERE state = 'pending'),"
            " COUNT(*) FILTER (WHERE state = 'dead') FROM outbox GROUP BY identity"
        )
        return {str(r[0]): (int(r[1]), int(r[2])) for r in rows}

    async def outbox_count(self, identity: str | None = None, *, state: str = "pending") -> int:
        """Outbox messages in ``state`` (of one charger, or of all)."""
        row = await self._row(
            "SELECT COUNT(*) FROM outbox WHERE state = ?1"
            " AND (?2 IS NULL OR (bucket = ?3 AND identity = ?2))",
            (state, identity, None if identity is None else outbox_bucket(identity)),
        )
        return int(row[0]) if row else 0

    async def charger_versions(self) -> dict[str, str | None]:
        """The OCPP subprotocol each registered charger last booted with."""
        rows = await self._rows("SELECT identity, ocpp_version FROM chargers")
        return {str(r[0]): None if r[1] is None else str(r[1]) for r in rows}

    async def site_list_entry(self, key: str) -> AuthEntry | None:
        row = await self._row("SELECT status, expiry, parent FROM site_list WHERE key = ?", (key,))
        return _row_entry(row[0], row[1], row[2]) if row else None

    async def site_list_put(self, key: str, entry: AuthEntry) -> None:
        """Add or replace one site list entry."""
        await self._write(
            [
                (
                    "INSERT INTO site_list(key, status, expiry, parent) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET status = excluded.status,"
                    " expiry = excluded.expiry, parent = excluded.parent",
                    (key, *_entry_row(entry)),
                )
            ]
        )

    async def site_list_remove(self, key: str) -> None:
        await self._write([("DELETE FROM site_list WHERE key = ?", (key,))])
