"""What the two SQL event stores share: the reads and the item upsert, written once.

:class:`SqlStore` implements the :class:`serving.store.EventStore` methods whose SQL is the same
on SQLite and PostgreSQL but for the placeholder (``?`` or ``%s``) and the quoting of a column;
each backend gives its connection scopes (``_read``, ``_write``) and keeps the methods whose SQL
or locking differ (appends, imports, user upserts, batched history reads).
"""

from __future__ import annotations

import abc
import time
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from serving.store import Event, EventStore, ItemRecord, UserRecord
from serving.store_rows import check_item, check_paging, to_event, to_item

USER_COLUMNS = "user_id, age, gender, occupation, zip_prefix, created_at"
ITEM_COLUMNS = "item_id, title, genres, year, tags, created_at, seq"


class SqlStore(EventStore):
    """An event store over a SQL database (see the module docstring).

    Subclasses set the class attributes and implement :meth:`_read` and :meth:`_write`.
    """

    #: The driver's placeholder: ``?`` (sqlite3) or ``%s`` (psycopg).
    MARK: ClassVar[str]
    #: The event columns a history read selects, in :class:`~serving.store.Event` order.
    EVENT_COLUMNS: ClassVar[str]
    #: The ``LIMIT`` value that means no limit.
    NO_LIMIT: ClassVar[Any]
    #: Inserts or replaces an item (the row of ``check_item`` and ``created_at``), giving it
    #: the next item sequence number.
    UPSERT_ITEM: ClassVar[str]

    @abc.abstractmethod
    def _read(self) -> AbstractContextManager[Any]:
        """A connection for reads (no lock)."""

    @abc.abstractmethod
    def _write(self) -> AbstractContextManager[Any]:
        """A connection inside a transaction that serialises writers."""

    def get_user(self, user_id: str) -> UserRecord | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {USER_COLUMNS} FROM users WHERE user_id = {self.MARK}", (user_id,)
            ).fetchone()
        return None if row is None else UserRecord(*row)

    def event_count(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])

    def user_count(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT count(*) FROM users").fetchone()[0])

    def history_since(self, user_id: str, sequence: int = 0) -> list[tuple[int, Event]]:
        check_paging(sequence, None)
        m = self.MARK
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT seq, {self.EVENT_COLUMNS} FROM events WHERE user_id = {m} AND seq > {m} "
                "ORDER BY seq",
                (user_id, sequence),
            ).fetchall()
        return [(int(row[0]), to_event(row[1:])) for row in rows]

    def events_since(self, sequence: int = 0, limit: int | None = None) -> list[tuple[int, Event]]:
        check_paging(sequence, limit)
        m = self.MARK
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT seq, {self.EVENT_COLUMNS} FROM events WHERE seq > {m} ORDER BY seq "
                f"LIMIT {m}",
                (sequence, self.NO_LIMIT if limit is None else limit),
            ).fetchall()
        return [(int(row[0]), to_event(row[1:])) for row in rows]

    def upsert_item(self, item: ItemRecord) -> tuple[ItemRecord, bool]:
        row = check_item(item)
        select = f"SELECT {ITEM_COLUMNS} FROM items WHERE item_id = {self.MARK}"
        with self._write() as conn:
            existed = conn.execute(
                f"SELECT 1 FROM items WHERE item_id = {self.MARK}", (item.item_id,)
            ).fetchone()
            conn.execute(self.UPSERT_ITEM, (*row, time.time()))
            stored = conn.execute(select, (item.item_id,)).fetchone()
        return to_item(stored), existed is None

    def items_since(self, sequence: int = 0) -> list[ItemRecord]:
        check_paging(sequence, None)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {ITEM_COLUMNS} FROM items WHERE seq > {self.MARK} ORDER BY seq",
                (sequence,),
            ).fetchall()
        return [to_item(row) for row in rows]

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute("SELECT 1").fetchone()
