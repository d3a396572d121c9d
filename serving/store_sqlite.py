"""The SQLite backend of :class:`serving.store.EventStore`: one file, WAL, a connection per thread.

Every write takes the database's write lock up front (``BEGIN IMMEDIATE``), so writes are
serialised: an idempotency key is checked and stored atomically with its events, and sequence
numbers follow commit order. In WAL mode readers never wait for that lock. ``synchronous=FULL``
syncs the WAL at every commit, so a returned append survives power loss, not only a crash.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from serving.store import (
    AppendResult,
    Event,
    StoreUnavailable,
    UserRecord,
)
from serving.store_rows import (
    check_batch_size,
    check_key,
    check_schema_version,
    check_user,
    event_rows,
    frame_event_rows,
    frame_user_rows,
    merged_user,
    replay,
    to_event,
    unique_users,
)
from serving.store_sql import USER_COLUMNS, SqlStore

BUSY_TIMEOUT_MS = 5000
_IN_CHUNK = 500  # user IDs per IN (...) query, well under SQLite's bound-variable limit

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    # AUTOINCREMENT: a sequence number is never reused, even after the newest rows are deleted.
    """CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, item_id TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('rating', 'watch')), rating REAL,
        timestamp REAL NOT NULL, received_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS events_user_time ON events (user_id, timestamp, seq)",
    "CREATE INDEX IF NOT EXISTS events_user_seq ON events (user_id, seq)",
    """CREATE TABLE IF NOT EXISTS users (
        user_id TEXT PRIMARY KEY, age REAL, gender TEXT, occupation TEXT, zip_prefix TEXT,
        created_at REAL NOT NULL)""",
    # seq is the store-wide upsert counter (the largest + 1, under the write lock), so that a
    # server follows additions and edits by sequence.
    """CREATE TABLE IF NOT EXISTS items (
        item_id TEXT PRIMARY KEY, title TEXT NOT NULL, genres TEXT NOT NULL, year INTEGER,
        tags TEXT NOT NULL, created_at REAL NOT NULL, seq INTEGER NOT NULL UNIQUE)""",
    """CREATE TABLE IF NOT EXISTS idempotency (
        key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, sequence_numbers TEXT NOT NULL,
        created_at REAL NOT NULL)""",
)
_INSERT_EVENT = (
    "INSERT INTO events (user_id, item_id, kind, rating, timestamp, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_USER = "INSERT OR IGNORE INTO users (user_id, created_at) VALUES (?, ?)"
_UPSERT_USER = """INSERT INTO users (user_id, age, gender, occupation, zip_prefix, created_at)
    VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET age = excluded.age,
    gender = excluded.gender, occupation = excluded.occupation, zip_prefix = excluded.zip_prefix"""
_INSERT_NEW_USER = _UPSERT_USER.split(" ON CONFLICT")[0] + " ON CONFLICT (user_id) DO NOTHING"
_UPSERT_ITEM = """INSERT INTO items (item_id, title, genres, year, tags, created_at, seq)
    VALUES (?, ?, ?, ?, ?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM items))
    ON CONFLICT (item_id) DO UPDATE SET title = excluded.title, genres = excluded.genres,
    year = excluded.year, tags = excluded.tags, seq = excluded.seq"""
_EVENT_COLUMNS = "user_id, item_id, kind, rating, timestamp"


class SqliteStore(SqlStore):
    """An :class:`~serving.store.EventStore` in one SQLite file.

    Parameters
    ----------
    path : str or Path
        The database file; it and its parent directories are created if missing.
    checkpoint_interval_s : float
        WAL checkpoints run in a background thread at this interval, never inside a request:
        SQLite's automatic checkpoint runs in whichever commit crosses 1,000 WAL pages, and
        copying 4 MB back with an fsync stalled that request (and, in an async server, every
        request queued behind it) by up to hundreds of milliseconds.

    Raises
    ------
    StoreUnavailable
        The file cannot be opened or switched to WAL mode.
    """

    MARK = "?"
    EVENT_COLUMNS = _EVENT_COLUMNS
    NO_LIMIT = -1  # LIMIT -1: no limit
    UPSERT_ITEM = _UPSERT_ITEM

    def __init__(self, path: str | Path, checkpoint_interval_s: float = 1.0) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        # Each connection with the lock its thread holds while using it: close() takes that
        # lock before closing, since closing a connection that another thread is executing on
        # crashes the interpreter (a segfault inside the sqlite3 module, seen in CI).
        self._connections: list[tuple[sqlite3.Connection, threading.RLock]] = []
        self._closed = False
        with self._write() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            check_schema_version(conn)
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(checkpoint_interval_s,), daemon=True,
            name="sqlite-checkpoint",
        )  # fmt: skip
        self._checkpointer.start()

    def _checkpoint_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                with self._read() as conn:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except (StoreUnavailable, sqlite3.Error):
                if self._closed:
                    return

    @property
    def url(self) -> str:
        return f"sqlite:///{self._path}"

    def _connection(self) -> tuple[sqlite3.Connection, threading.RLock]:
        conn = getattr(self._local, "conn", None)
        if conn is not None and not self._closed:
            return conn, self._local.guard
        guard = threading.RLock()
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"store {self.url} is closed")
            conn = sqlite3.connect(
                self._path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # autocommit; writes open their own BEGIN IMMEDIATE
                check_same_thread=False,  # so that close() can close every thread's connection
            )
            self._connections.append((conn, guard))
        with guard:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreUnavailable(f"store {self.url} cannot use WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the background thread checkpoints
        self._local.conn, self._local.guard = conn, guard
        return conn, guard

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        try:
            conn, guard = self._connection()
            with guard:
                if self._closed:  # close() ran between fetching the connection and locking it
                    raise StoreUnavailable(f"store {self.url} is closed")
                yield conn
        except sqlite3.OperationalError as exc:  # locked past the timeout, I/O error, ...
            raise StoreUnavailable(f"SQLite store {self.url}: {exc}") from exc
        except sqlite3.ProgrammingError as exc:
            if self._closed:  # closed by another thread mid-call
                raise StoreUnavailable(f"store {self.url} is closed") from exc
            raise

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._read() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # Also when COMMIT itself fails (disk full, I/O error): an open transaction
                # would keep the write lock and break this thread's connection for good.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def append(
        self, events: Sequence[Event], idempotency_key: str | None = None, fingerprint: str = ""
    ) -> AppendResult:
        rows = event_rows(events)
        check_key(idempotency_key, fingerprint)
        now = time.time()
        with self._write() as conn:
            if idempotency_key is not None:
                stored = conn.execute(
                    "SELECT fingerprint, sequence_numbers FROM idempotency WHERE key = ?",
                    (idempotency_key,),
                ).fetchone()
                if stored is not None:
                    return replay(idempotency_key, fingerprint, stored)
            seqs = [int(conn.execute(_INSERT_EVENT, (*row, now)).lastrowid) for row in rows]
            conn.executemany(_INSERT_USER, [(user, now) for user in unique_users(rows)])
            if idempotency_key is not None:
                conn.execute(
                    "INSERT INTO idempotency (key, fingerprint, sequence_numbers, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (idempotency_key, fingerprint, json.dumps(seqs), now),
                )
        return AppendResult(seqs, replayed=False)

    def histories(self, user_ids: Sequence[str]) -> dict[str, list[Event]]:
        out: dict[str, list[Event]] = {user: [] for user in user_ids}
        ids = list(out)
        with self._read() as conn:
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                marks = ", ".join("?" * len(chunk))
                for row in conn.execute(
                    f"SELECT {_EVENT_COLUMNS} FROM events WHERE user_id IN ({marks}) "
                    "ORDER BY user_id, timestamp, seq",
                    chunk,
                ):
                    out[row[0]].append(to_event(row))
        return out

    def upsert_user(self, user: UserRecord) -> UserRecord:
        row = check_user(user)
        with self._write() as conn:
            conn.execute(_UPSERT_USER, (*row, time.time()))
            stored = conn.execute(
                f"SELECT {USER_COLUMNS} FROM users WHERE user_id = ?", (user.user_id,)
            ).fetchone()
        return UserRecord(*stored)

    def update_user(self, user_id: str, fields: Mapping[str, object]) -> tuple[UserRecord, bool]:
        check_user(UserRecord(user_id))
        with self._write() as conn:  # BEGIN IMMEDIATE: one writer at a time
            created = conn.execute(
                "INSERT INTO users (user_id, created_at) VALUES (?, ?) "
                "ON CONFLICT (user_id) DO NOTHING",
                (user_id, time.time()),
            ).rowcount
            select = f"SELECT {USER_COLUMNS} FROM users WHERE user_id = ?"
            record = merged_user(conn.execute(select, (user_id,)).fetchone(), user_id, fields)
            conn.execute(_UPSERT_USER, (*check_user(record), time.time()))
            stored = conn.execute(select, (user_id,)).fetchone()
        return UserRecord(*stored), not created

    def import_events(self, frame: pd.DataFrame, batch_size: int = 50_000) -> int:
        check_batch_size(batch_size)
        rows = frame_event_rows(frame)
        now = time.time()
        # One transaction per batch, so live appends can interleave with a long import.
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            with self._write() as conn:
                conn.executemany(_INSERT_EVENT, [(*row, now) for row in batch])
                conn.executemany(_INSERT_USER, [(user, now) for user in unique_users(batch)])
        return len(rows)

    def import_users(self, frame: pd.DataFrame, keep_existing: bool = False) -> int:
        rows = frame_user_rows(frame)
        now = time.time()
        sql = _INSERT_NEW_USER if keep_existing else _UPSERT_USER
        with self._write() as conn:
            conn.executemany(sql, [(*row, now) for row in rows])
        return len(rows)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        if self._checkpointer is not threading.current_thread():
            self._checkpointer.join()
        for conn, guard in connections:
            with guard:  # waits for a call in progress on another thread (at most the busy timeout)
                conn.close()
