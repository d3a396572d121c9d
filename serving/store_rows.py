"""Rows and checks that the event-store backends share (not part of the public API)."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from serving.store import (
    EVENT_KINDS,
    SCHEMA_VERSION,
    USER_FIELDS,
    AppendResult,
    Event,
    IdempotencyConflict,
    ItemRecord,
    UserRecord,
)

Row = tuple[str, str, str, float | None, float]  # user_id, item_id, kind, rating, timestamp
UserRow = tuple[str, float | None, str | None, str | None, str | None]


def _finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def event_rows(events: Sequence[Event]) -> list[Row]:
    """Check ``events`` structurally and return them as plain rows (floats made float)."""
    if len(events) == 0:
        raise ValueError("events is empty; append needs at least one event")
    rows = []
    for i, event in enumerate(events):
        if not isinstance(event, Event):
            raise ValueError(f"events[{i}] is a {type(event).__name__}, not an Event")
        for name in ("user_id", "item_id"):
            value = getattr(event, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"events[{i}].{name} must be a non-empty str, got {value!r}")
        if event.kind not in EVENT_KINDS:
            raise ValueError(f"events[{i}].kind must be one of {EVENT_KINDS}, got {event.kind!r}")
        if event.kind == "rating" and not _finite(event.rating):
            raise ValueError(f"events[{i}].rating must be a finite number for kind 'rating'")
        if event.kind == "watch" and event.rating is not None:
            raise ValueError(f"events[{i}].rating must be None for kind 'watch'")
        if not _finite(event.timestamp):
            raise ValueError(f"events[{i}].timestamp must be a finite number of seconds")
        rating = None if event.rating is None else float(event.rating)
        rows.append((event.user_id, event.item_id, event.kind, rating, float(event.timestamp)))
    return rows


def frame_event_rows(frame: pd.DataFrame) -> list[Row]:
    """Rows of an interaction log for :meth:`EventStore.import_events` (see there)."""
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing}; it has {list(frame.columns)}")
    users, items = frame["user_id"].astype(str), frame["item_id"].astype(str)
    for name, values in (("user_id", users), ("item_id", items)):
        empty = np.flatnonzero((values == "").to_numpy() | frame[name].isna().to_numpy())
        if len(empty):
            raise ValueError(f"frame.{name} is empty or missing in rows {empty[:5].tolist()}")
    times = frame["timestamp"]
    if pd.api.types.is_datetime64_any_dtype(times):
        times = (times - pd.Timestamp(0, tz=getattr(times.dt, "tz", None))).dt.total_seconds()
    seconds = pd.to_numeric(times, errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(seconds))
    if len(bad):
        raise ValueError(f"frame.timestamp is not a finite number in rows {bad[:5].tolist()}")
    rating = frame["rating"] if "rating" in frame.columns else pd.Series(np.nan, frame.index)
    ratings = pd.to_numeric(rating, errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(np.isinf(ratings) | (rating.notna().to_numpy() & np.isnan(ratings)))
    if len(bad):
        raise ValueError(f"frame.rating is not a finite number in rows {bad[:5].tolist()}")
    has = ~np.isnan(ratings)
    kinds = np.where(has, "rating", "watch").tolist()
    values = [float(r) if h else None for r, h in zip(ratings.tolist(), has.tolist(), strict=True)]
    return list(zip(users, items, kinds, values, seconds.tolist(), strict=True))


def frame_user_rows(frame: pd.DataFrame) -> list[UserRow]:
    """Rows of a user table for :meth:`EventStore.import_users` (see there)."""
    if "user_id" not in frame.columns:
        raise ValueError(f"frame lacks column 'user_id'; it has {list(frame.columns)}")
    ids = frame["user_id"].astype(str)
    if ((ids == "") | frame["user_id"].isna()).any():
        raise ValueError("frame.user_id has empty or missing values")
    columns = [ids.tolist()]
    for name in USER_FIELDS:
        values = frame[name] if name in frame.columns else pd.Series(None, frame.index)
        if name == "age":
            ages = pd.to_numeric(values, errors="coerce")
            columns.append([None if math.isnan(a) else float(a) for a in ages.astype(float)])
        else:
            columns.append([None if pd.isna(v) else str(v) for v in values])
    # One row per user; a repeated user_id keeps its last row (as sequential upserts would).
    return list({row[0]: row for row in zip(*columns, strict=True)}.values())


def check_user(user: UserRecord) -> UserRow:
    """``user`` as a row, checking the ID."""
    if not isinstance(user.user_id, str) or not user.user_id:
        raise ValueError(f"user.user_id must be a non-empty str, got {user.user_id!r}")
    if user.age is not None and not isinstance(user.age, numbers.Real):
        raise ValueError(f"user.age must be a number or None, got {user.age!r}")
    age = None if user.age is None or math.isnan(user.age) else float(user.age)
    return (user.user_id, age, user.gender, user.occupation, user.zip_prefix)


def merged_user(stored: Sequence[Any], user_id: str, fields: Mapping[str, object]) -> UserRecord:
    """The stored user row (``user_id, age, gender, occupation, zip_prefix, created_at``) with
    ``fields`` replaced, checked as :func:`check_user` checks a record."""
    unknown = sorted(set(fields) - set(USER_FIELDS))
    if unknown:
        raise ValueError(f"fields has unknown user fields {unknown}; known: {list(USER_FIELDS)}")
    current = dict(zip(("user_id", *USER_FIELDS), stored[:5], strict=True))
    record = UserRecord(**{**current, **fields, "user_id": user_id})
    check_user(record)
    return record


def to_event(row: Sequence[Any]) -> Event:
    """An Event from a (user_id, item_id, kind, rating, timestamp) database row."""
    # Both backends return float (REAL / DOUBLE PRECISION) or None already.
    return Event._make(row)


def check_key(idempotency_key: str | None, fingerprint: str) -> None:
    """Reject an empty or non-str idempotency key and a non-str fingerprint."""
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not idempotency_key
    ):
        raise ValueError(
            f"idempotency_key must be a non-empty str or None, got {idempotency_key!r}"
        )
    if not isinstance(fingerprint, str):
        raise ValueError(f"fingerprint must be a str, got {type(fingerprint).__name__}")


def replay(key: str, fingerprint: str, stored: Sequence[Any]) -> AppendResult:
    """The answer to a reused key, given its stored (fingerprint, sequence numbers JSON) row."""
    if stored[0] != fingerprint:
        raise IdempotencyConflict(
            f"idempotency_key {key!r} was already used for a different request"
        )
    return AppendResult([int(s) for s in json.loads(stored[1])], replayed=True)


def check_schema_version(conn: Any) -> None:
    """Record :data:`SCHEMA_VERSION` in a new database, or check an existing one's.

    ``conn`` is a DB-API-like connection whose ``execute`` returns a cursor (sqlite3, psycopg);
    call it inside the transaction that created the tables.
    """
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    if row is None:
        conn.execute(f"INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION})")
    elif row[0] != SCHEMA_VERSION:
        raise RuntimeError(
            f"the store's schema is version {row[0]}, but this code reads version {SCHEMA_VERSION}"
        )


def check_paging(sequence: int, limit: int | None) -> None:
    """Validate :meth:`EventStore.events_since` arguments."""
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
        raise ValueError(f"sequence must be an int >= 0, got {sequence!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be an int >= 0 or None, got {limit!r}")


def check_batch_size(batch_size: int) -> None:
    """Validate :meth:`EventStore.import_events`'s ``batch_size``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


def unique_users(rows: Sequence[Sequence[Any]]) -> list[str]:
    """The distinct first fields of ``rows`` (user IDs), in first-seen order."""
    return list(dict.fromkeys(row[0] for row in rows))


ItemRow = tuple[str, str, str, int | None, str]  # item_id, title, genres JSON, year, tags JSON


def check_item(item: ItemRecord) -> ItemRow:
    """``item`` as a row (genres and tags as JSON lists), checking every field."""
    if not isinstance(item.item_id, str) or not item.item_id:
        raise ValueError(f"item.item_id must be a non-empty str, got {item.item_id!r}")
    if not isinstance(item.title, str) or not item.title.strip():
        raise ValueError(f"item.title must be a non-empty str, got {item.title!r}")
    for name in ("genres", "tags"):
        values = getattr(item, name)
        if isinstance(values, str) or not all(isinstance(v, str) and v for v in values):
            raise ValueError(f"item.{name} must be a sequence of non-empty str, got {values!r}")
    if item.year is not None and (isinstance(item.year, bool) or not isinstance(item.year, int)):
        raise ValueError(f"item.year must be an int or None, got {item.year!r}")
    return (
        item.item_id, item.title, json.dumps(list(item.genres)), item.year,
        json.dumps(list(item.tags)),
    )  # fmt: skip


def to_item(row: Sequence[Any]) -> ItemRecord:
    """An ItemRecord from an (item_id, title, genres, year, tags, created_at, seq) row."""
    item_id, title, genres, year, tags, created_at, seq = row
    return ItemRecord(
        item_id, title, tuple(json.loads(genres)), None if year is None else int(year),
        tuple(json.loads(tags)), float(created_at), int(seq),
    )  # fmt: skip
