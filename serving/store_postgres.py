"""The PostgreSQL backend of :class:`serving.store.EventStore`, on a psycopg connection pool.

Every write that adds events takes one transaction-scoped advisory lock, so appends and imports
are serialised: sequence numbers then follow commit order (``events_since`` never skips a
late-committing smaller number, as it could with concurrent ``BIGSERIAL`` writers), and an
idempotency key is checked and stored atomically with its events. Reads take no lock. Commits
are ordinary durable commits (``synchronous_commit`` is left on).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import pandas as pd
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from serving.store import (
    AppendResult,
    Event,
    StoreUnavailable,
    UserRecord,
    redact,
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

# pg_advisory_xact_lock keys (any bigint; these spell "nwevents" and "nwschema").
_APPEND_LOCK = int.from_bytes(b"nwevents", "big") >> 1
_SCHEMA_LOCK = int.from_bytes(b"nwschema", "big") >> 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS events (
        seq BIGSERIAL PRIMARY KEY, user_id TEXT NOT NULL, item_id TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('rating', 'watch')), rating DOUBLE PRECISION,
        "timestamp" DOUBLE PRECISION NOT NULL, received_at DOUBLE PRECISION NOT NULL)""",
    'CREATE INDEX IF NOT EXISTS events_user_time ON events (user_id, "timestamp", seq)',
    "CREATE INDEX IF NOT EXISTS events_user_seq ON events (user_id, seq)",
    """CREATE TABLE IF NOT EXISTS users (
        user_id TEXT PRIMARY KEY, age DOUBLE PRECISION, gender TEXT, occupation TEXT,
        zip_prefix TEXT, created_at DOUBLE PRECISION NOT NULL)""",
    # seq comes from a sequence, taken under the append lock, so it follows commit order.
    "CREATE SEQUENCE IF NOT EXISTS items_seq",
    """CREATE TABLE IF NOT EXISTS items (
        item_id TEXT PRIMARY KEY, title TEXT NOT NULL, genres TEXT NOT NULL, year INTEGER,
        tags TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, seq BIGINT NOT NULL UNIQUE)""",
    """CREATE TABLE IF NOT EXISTS idempotency (
        key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, sequence_numbers TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL)""",
)
# ORDER BY n makes nextval() run in batch order, so sorted(seq) lines up with the events.
_INSERT_EVENTS = """INSERT INTO events (user_id, item_id, kind, rating, "timestamp", received_at)
    SELECT u, i, k, r, t, %s FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[],
    %s::float8[]) WITH ORDINALITY AS x(u, i, k, r, t, n) ORDER BY n RETURNING seq"""
_COPY_EVENTS = 'COPY events (user_id, item_id, kind, rating, "timestamp", received_at) FROM STDIN'
_INSERT_USERS = """INSERT INTO users (user_id, created_at) SELECT u, %s FROM unnest(%s::text[])
    AS u ON CONFLICT (user_id) DO NOTHING"""
_UPSERT_USERS = """INSERT INTO users (user_id, age, gender, occupation, zip_prefix, created_at)
    SELECT u, a, g, o, z, %s FROM unnest(%s::text[], %s::float8[], %s::text[], %s::text[],
    %s::text[]) AS x(u, a, g, o, z) ON CONFLICT (user_id) DO UPDATE SET age = excluded.age,
    gender = excluded.gender, occupation = excluded.occupation, zip_prefix = excluded.zip_prefix"""
_INSERT_NEW_USERS = _UPSERT_USERS.split(" ON CONFLICT")[0] + " ON CONFLICT (user_id) DO NOTHING"
_UPSERT_ITEM = """INSERT INTO items (item_id, title, genres, year, tags, created_at, seq)
    VALUES (%s, %s, %s, %s, %s, %s, nextval('items_seq'))
    ON CONFLICT (item_id) DO UPDATE SET title = excluded.title, genres = excluded.genres,
    year = excluded.year, tags = excluded.tags, seq = excluded.seq"""
_EVENT_COLUMNS = 'user_id, item_id, kind, rating, "timestamp"'


# Seconds a call waits for a pooled connection while the server is known to be unreachable.
OUTAGE_WAIT_S = 0.05


class PostgresStore(SqlStore):
    """An :class:`~serving.store.EventStore` in a PostgreSQL database.

    Parameters
    ----------
    url : str
        A libpq URI, ``postgresql://user:password@host:port/dbname?...``.
    max_connections : int
        The pool's maximum size (its minimum is 1).
    timeout : float
        Seconds to wait for the server at open, and for a free pooled connection per call
        (less through an outage: :meth:`_checkout`).

    Raises
    ------
    StoreUnavailable
        The server cannot be reached or refuses the connection.
    """

    MARK = "%s"
    EVENT_COLUMNS = _EVENT_COLUMNS
    NO_LIMIT = None  # LIMIT NULL: no limit
    UPSERT_ITEM = _UPSERT_ITEM

    def __init__(self, url: str, *, max_connections: int = 8, timeout: float = 10.0) -> None:
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise ValueError(f"max_connections must be an int >= 1, got {max_connections!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be an int >= 1, got {max_connections!r}")
        if not (isinstance(timeout, int | float) and timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self._url, self._timeout = url, float(timeout)
        self._reachable = True  # the last call reached the server
        # libpq's connect_timeout is whole seconds and treats values below 2 as 2.
        connect = {"autocommit": True, "connect_timeout": max(2, math.ceil(timeout))}
        # A direct connection first: it reports the server's own error (refused, bad password)
        # at once, where the pool would retry in the background until the timeout.
        try:
            with psycopg.connect(url, **connect) as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in _SCHEMA:
                    conn.execute(statement)
                check_schema_version(conn)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL store {self.url}: {exc}".strip()) from exc
        self._pool = ConnectionPool(
            url,
            kwargs=connect,
            min_size=1,
            max_size=max_connections,
            open=True,
            check=ConnectionPool.check_connection,  # drop connections a server restart broke
            name="nextwatch-store",
            timeout=self._timeout,
        )
        try:
            self._pool.wait(timeout=self._timeout)
        except psycopg.OperationalError as exc:
            self._pool.close()
            raise StoreUnavailable(f"PostgreSQL store {self.url}: {exc}") from exc

    @property
    def url(self) -> str:
        return redact(self._url)

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        try:
            conn = self._checkout()
        except psycopg.OperationalError as exc:  # also PoolTimeout and PoolClosed
            self._reachable = False
            raise StoreUnavailable(f"PostgreSQL store {self.url}: {exc}") from exc
        try:
            with conn:  # commits, or rolls back on an error, as the pool's connection() does
                yield conn
            self._reachable = True
        except psycopg.OperationalError as exc:
            self._reachable = False
            raise StoreUnavailable(f"PostgreSQL store {self.url}: {exc}") from exc
        finally:
            self._pool.putconn(conn)  # a broken connection is replaced by the pool

    def _checkout(self) -> psycopg.Connection:
        """A pooled connection, without holding up the caller through an outage.

        The service calls the store on its event loop, so a call that waits out the full
        ``timeout`` holds up every other request, health checks included. A call first waits
        :data:`OUTAGE_WAIT_S`; if the pool meanwhile lost a connection or failed to open one,
        the server is down and the call fails at once, else the pool is only busy and the call
        waits out the rest of ``timeout``. Once a call has failed, calls wait only the short
        time until one gets through (the pool keeps reconnecting in the background).
        """
        brief = min(self._timeout, OUTAGE_WAIT_S)
        if not self._reachable:
            return self._pool.getconn(timeout=brief)
        start, failures = time.monotonic(), self._failures()
        try:
            return self._pool.getconn(timeout=brief)
        except PoolTimeout:
            if self._failures() != failures:
                raise
        return self._pool.getconn(timeout=max(brief, self._timeout - (time.monotonic() - start)))

    def _failures(self) -> int:
        stats = self._pool.get_stats()
        return stats.get("connections_errors", 0) + stats.get("connections_lost", 0)

    _read = _connection  # reads take no lock

    @contextmanager
    def _write(self, lock: bool = True) -> Iterator[psycopg.Connection]:
        with self._connection() as conn, conn.transaction():
            if lock:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_APPEND_LOCK,))
            yield conn

    def append(
        self, events: Sequence[Event], idempotency_key: str | None = None, fingerprint: str = ""
    ) -> AppendResult:
        rows = event_rows(events)
        check_key(idempotency_key, fingerprint)
        now = time.time()
        columns = [list(column) for column in zip(*rows, strict=True)]
        with self._write() as conn:
            if idempotency_key is not None:
                # Under the lock, so a concurrent request with this key has committed or not begun.
                stored = conn.execute(
                    "SELECT fingerprint, sequence_numbers FROM idempotency WHERE key = %s",
                    (idempotency_key,),
                ).fetchone()
                if stored is not None:
                    return replay(idempotency_key, fingerprint, stored)
            seqs = sorted(int(r[0]) for r in conn.execute(_INSERT_EVENTS, (now, *columns)))
            conn.execute(_INSERT_USERS, (now, unique_users(rows)))
            if idempotency_key is not None:
                conn.execute(
                    "INSERT INTO idempotency (key, fingerprint, sequence_numbers, created_at) "
                    "VALUES (%s, %s, %s, %s)",
                    (idempotency_key, fingerprint, json.dumps(seqs), now),
                )
        return AppendResult(seqs, replayed=False)

    def histories(self, user_ids: Sequence[str]) -> dict[str, list[Event]]:
        out: dict[str, list[Event]] = {user: [] for user in user_ids}
        if not out:
            return out
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE user_id = ANY(%s) "
                'ORDER BY user_id, "timestamp", seq',
                (list(out),),
            ).fetchall()
        for row in rows:
            out[row[0]].append(to_event(row))
        return out

    def upsert_user(self, user: UserRecord) -> UserRecord:
        row = check_user(user)
        with self._write(lock=False) as conn:
            conn.execute(_UPSERT_USERS, (time.time(), *([value] for value in row)))
            stored = conn.execute(
                f"SELECT {USER_COLUMNS} FROM users WHERE user_id = %s", (user.user_id,)
            ).fetchone()
        return UserRecord(*stored)

    def update_user(self, user_id: str, fields: Mapping[str, object]) -> tuple[UserRecord, bool]:
        check_user(UserRecord(user_id))
        with self._write(lock=False) as conn:
            created = conn.execute(
                "INSERT INTO users (user_id, created_at) VALUES (%s, %s) "
                "ON CONFLICT (user_id) DO NOTHING",
                (user_id, time.time()),
            ).rowcount
            # The row exists now; FOR UPDATE holds it until commit, so a concurrent update of
            # other fields waits and then reads this one's result.
            stored = conn.execute(
                f"SELECT {USER_COLUMNS} FROM users WHERE user_id = %s FOR UPDATE", (user_id,)
            ).fetchone()
            record = merged_user(stored, user_id, fields)
            row = check_user(record)
            conn.execute(_UPSERT_USERS, (time.time(), *([value] for value in row)))
            stored = conn.execute(
                f"SELECT {USER_COLUMNS} FROM users WHERE user_id = %s", (user_id,)
            ).fetchone()
        return UserRecord(*stored), not created

    def import_events(self, frame: pd.DataFrame, batch_size: int = 50_000) -> int:
        check_batch_size(batch_size)
        rows = frame_event_rows(frame)
        now = time.time()
        # One transaction per batch, so live appends can interleave with a long import.
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            with self._write() as conn:
                with conn.cursor() as cursor, cursor.copy(_COPY_EVENTS) as copy:
                    for row in batch:
                        copy.write_row((*row, now))
                conn.execute(_INSERT_USERS, (now, unique_users(batch)))
        return len(rows)

    def import_users(self, frame: pd.DataFrame, keep_existing: bool = False) -> int:
        rows = frame_user_rows(frame)
        if not rows:
            return 0
        columns = [list(column) for column in zip(*rows, strict=True)]
        sql = _INSERT_NEW_USERS if keep_existing else _UPSERT_USERS
        with self._write(lock=False) as conn:
            conn.execute(sql, (time.time(), *columns))
        return len(rows)

    def close(self) -> None:
        self._pool.close()
