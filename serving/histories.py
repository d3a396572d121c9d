"""Users' histories as the model consumes them, read from the event store incrementally.

:func:`user_state` folds a user's events into the history bag and rating stats. A
:class:`HistoryCache` keeps each recent user's folded events in the server process and asks the
store, on every request, only for the events stored since: one indexed lookup that finds
nothing for most requests. Both stores number events in commit order, so an event acknowledged
by any process has a larger number than everything a reader has seen, and the next request
always includes it: the cache is never stale. A heavy user (2,700 events in ml-latest-small)
then costs one indexed lookup that finds nothing, instead of reading and folding every event.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from serving.store import Event, EventStore, UserRecord

USER_FEATURES = ("age", "gender", "occupation", "zip_prefix")


@dataclass(frozen=True)
class UserState:
    """What the store knows about a user, as the model consumes it."""

    history: list[str]  # distinct items, by the time of their latest event, oldest first
    stats: dict[str, float]  # rating_count, rating_mean, last_timestamp
    features: dict[str, object]  # stored demographics
    events: int  # stored events, including repeats
    registered: bool  # the store has a user row


def with_user(state: UserState, user: UserRecord | None) -> UserState:
    """``state`` with the demographics and registration of the user row ``user`` (its history
    and stats copied, so that a caller cannot change a cached state)."""
    features: dict[str, object] = {}
    if user is not None:
        features = {f: getattr(user, f) for f in USER_FEATURES if getattr(user, f) is not None}
    return replace(
        state,
        history=list(state.history),
        stats=dict(state.stats),
        features=features,
        registered=user is not None,
    )


def user_state(events: Sequence[Event], user: UserRecord | None) -> UserState:
    """Fold a user's stored events (oldest first) into a history and rating stats.

    A re-watched or re-rated item counts once, at its latest event, with its latest rating (a
    later watch without a rating keeps the rating). Items never rated join the history but not
    the rating mean.
    """
    latest: dict[str, Event] = {}
    rating: dict[str, float] = {}
    for event in events:
        latest.pop(event.item_id, None)  # re-insert: dict order is by latest event
        latest[event.item_id] = event
        if event.rating is not None:
            rating[event.item_id] = event.rating
    ratings = list(rating.values())
    stats: dict[str, float] = {"rating_count": float(len(latest))}
    if ratings:
        stats["rating_mean"] = float(sum(ratings) / len(ratings))
    if events:
        stats["last_timestamp"] = float(max(e.timestamp for e in events))
    return with_user(UserState(list(latest), stats, {}, len(events), False), user)


@dataclass(frozen=True, slots=True)
class _Entry:
    """One user's events folded to the latest event per item, as arrays ordered by that event's
    ``(timestamp, seq)``: no Python object per event, so that the garbage collector, which
    walks every container object, does not walk the cache (namedtuple events for all of
    ml-latest-small made each full collection walk hundreds of thousands of objects)."""

    sequence: int  # the largest sequence number folded in
    count: int  # events folded in, repeats included
    items: np.ndarray  # object: item IDs
    timestamps: np.ndarray  # float64
    seqs: np.ndarray  # int64
    ratings: np.ndarray  # float64: the item's latest rating (NaN: never rated)
    rated_at: np.ndarray  # float64: that rating's timestamp (-inf: never rated)
    rated_seqs: np.ndarray  # int64: that rating's sequence number (-1: never rated)
    state: UserState  # folded, without the user row


_EMPTY = _Entry(0, 0, np.empty(0, object), np.empty(0), np.empty(0, np.int64), np.empty(0),
                np.empty(0), np.empty(0, np.int64),
                UserState([], {"rating_count": 0.0}, {}, 0, False))  # fmt: skip


def _latest_ratings(
    items: np.ndarray, ratings: np.ndarray, rated_at: np.ndarray, rated_seqs: np.ndarray,
    kept: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """For each item of ``kept``, its latest rating among the rows ``items``/``ratings`` (by
    ``(rated_at, rated_seqs)``), with that rating's time and sequence number."""
    out = (np.full(len(kept), np.nan), np.full(len(kept), -np.inf), np.full(len(kept), -1))
    rows = np.flatnonzero(~np.isnan(ratings))
    if not len(rows) or not len(kept):
        return out
    rows = rows[np.lexsort((rated_seqs[rows], rated_at[rows]))]  # oldest rating first
    rated, last = np.unique(items[rows][::-1], return_index=True)  # sorted IDs, latest rating
    best = rows[len(rows) - 1 - last]
    pos = np.minimum(np.searchsorted(rated, kept), len(rated) - 1)
    hit = rated[pos] == kept
    for target, source in zip(out, (ratings, rated_at, rated_seqs), strict=True):
        target[hit] = source[best[pos[hit]]]
    return out[0], out[1], out[2].astype(np.int64)


def _fold(entry: _Entry, new: Sequence[tuple[int, Event]]) -> _Entry:
    """``entry`` with the events ``new`` folded in, as :func:`user_state` folds a whole log."""
    items = np.concatenate([entry.items, np.array([e.item_id for _, e in new], dtype=object)])
    timestamps = np.concatenate([entry.timestamps, [e.timestamp for _, e in new]])
    seqs = np.concatenate([entry.seqs, np.array([seq for seq, _ in new], np.int64)])
    ratings = np.concatenate(
        [entry.ratings, [np.nan if e.rating is None else e.rating for _, e in new]]
    )
    rated_at = np.concatenate(
        [entry.rated_at, [-np.inf if e.rating is None else e.timestamp for _, e in new]]
    )
    rated_seqs = np.concatenate(
        [entry.rated_seqs, np.array([-1 if e.rating is None else q for q, e in new], np.int64)]
    )
    order = np.lexsort((seqs, timestamps))  # by (timestamp, seq): unique, the log's order
    _, last = np.unique(items[order][::-1], return_index=True)  # each item's latest event
    keep = order[np.sort(len(order) - 1 - last)]
    ratings, rated_at, rated_seqs = _latest_ratings(
        items, ratings, rated_at, rated_seqs, items[keep]
    )
    items, timestamps, seqs = items[keep], timestamps[keep], seqs[keep]
    count = entry.count + len(new)
    stats: dict[str, float] = {"rating_count": float(len(items))}
    rated = ratings[~np.isnan(ratings)]
    if len(rated):
        stats["rating_mean"] = float(rated.sum() / len(rated))
    if count:
        stats["last_timestamp"] = float(timestamps.max())
    state = UserState(items.tolist(), stats, {}, count, False)
    sequence = max(entry.sequence, max(seq for seq, _ in new))
    return _Entry(sequence, count, items, timestamps, seqs, ratings, rated_at, rated_seqs, state)


class HistoryCache:
    """Folded histories of the ``max_users`` most recently requested users.

    Parameters
    ----------
    store : EventStore
    max_users : int
        Users kept (least recently requested dropped first); 0 reads every history whole.

    Raises
    ------
    ValueError
        If ``max_users`` is negative.
    """

    def __init__(self, store: EventStore, max_users: int = 10_000) -> None:
        if isinstance(max_users, bool) or not isinstance(max_users, int) or max_users < 0:
            raise ValueError(f"max_users must be an int >= 0, got {max_users!r}")
        self.store = store
        self.max_users = max_users
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def state(self, user_id: str) -> UserState:
        """``user_id``'s folded events, including every event stored before this call
        (demographics are not included: see :func:`with_user`)."""
        with self._lock:
            entry = self._entries.get(user_id, _EMPTY)
        new = self.store.history_since(user_id, entry.sequence)
        if not new:
            if entry is _EMPTY:
                return user_state([], None)  # a fresh one: callers own what they get
            with self._lock:
                if user_id in self._entries:
                    self._entries.move_to_end(user_id)
            return entry.state
        entry = _fold(entry, new)
        if self.max_users:
            with self._lock:
                current = self._entries.get(user_id)
                if current is None or current.sequence <= entry.sequence:  # a racer may be newer
                    self._entries[user_id] = entry
                    self._entries.move_to_end(user_id)
                while len(self._entries) > self.max_users:
                    self._entries.popitem(last=False)
        return entry.state
