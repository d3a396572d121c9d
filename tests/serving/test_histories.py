"""The per-process history cache: incremental reads that never serve a stale history."""

from __future__ import annotations

import numpy as np
import pytest

from serving.histories import HistoryCache, user_state
from serving.store import Event, UserRecord


def rating(user: str, item: str, t: float, value: float = 4.0) -> Event:
    return Event(user, item, "rating", value, t)


class CountingStore:
    """Counts what the cache asks of the store it wraps."""

    def __init__(self, store) -> None:
        self.store = store
        self.asked: list[tuple[str, int]] = []

    def history_since(self, user_id: str, sequence: int = 0):
        self.asked.append((user_id, sequence))
        return self.store.history_since(user_id, sequence)


def test_the_cache_reads_only_new_events_and_folds_them_in_time_order(store):
    store.append([rating("u", "a", 50, 5.0), rating("u", "b", 10, 3.0)])
    counting = CountingStore(store)
    cache = HistoryCache(counting)
    first = cache.state("u")
    assert first.history == ["b", "a"] and first.stats["rating_mean"] == 4.0

    assert cache.state("u") is first  # nothing new: the folded state is reused
    # A later write with an *earlier* timestamp, and a re-rating: folded as a full read would.
    store.append([rating("u", "c", 5, 1.0), rating("u", "b", 70, 1.0)])
    second = cache.state("u")
    assert counting.asked == [("u", 0), ("u", 2), ("u", 2)]
    assert second == user_state(store.history("u"), None)
    assert second.history == ["c", "a", "b"] and second.events == 4
    assert second.stats == {"rating_count": 3.0, "rating_mean": 7.0 / 3, "last_timestamp": 70.0}


def test_a_write_through_another_process_is_seen_on_the_next_read(store_url):
    from serving.store import open_store

    with open_store(store_url) as reader, open_store(store_url) as writer:
        cache = HistoryCache(reader)
        assert cache.state("u").events == 0
        writer.append([rating("u", "a", 1)])
        assert cache.state("u").history == ["a"]
        writer.append([rating("u", "b", 2)])
        assert cache.state("u").history == ["a", "b"]


def test_the_least_recently_requested_users_are_dropped(store):
    store.append([rating(u, "a", 1) for u in ("u1", "u2", "u3")])
    counting = CountingStore(store)
    cache = HistoryCache(counting, max_users=2)
    for user in ("u1", "u2", "u1", "u3"):  # u2 is the least recent when u3 arrives
        cache.state(user)
    assert len(cache) == 2
    counting.asked.clear()
    cache.state("u1"), cache.state("u2")
    assert counting.asked == [("u1", 1), ("u2", 0)]  # u1 kept, u2 read whole again

    uncached = HistoryCache(counting, max_users=0)
    uncached.state("u1"), uncached.state("u1")
    assert len(uncached) == 0 and counting.asked[-2:] == [("u1", 0), ("u1", 0)]
    with pytest.raises(ValueError, match="max_users"):
        HistoryCache(store, max_users=-1)


def test_demographics_are_not_part_of_the_cached_state(store):
    store.upsert_user(UserRecord("u", age=30.0, gender="F"))
    store.append([rating("u", "a", 1)])
    state = HistoryCache(store).state("u")
    assert state.features == {} and not state.registered  # the service adds the user row


class ListStore:
    """An in-memory log numbered in append order (as both real stores number commits)."""

    def __init__(self) -> None:
        self.log: list[Event] = []

    def history_since(self, user_id: str, sequence: int = 0):
        return [(n, e) for n, e in enumerate(self.log, 1) if n > sequence and e.user_id == user_id]

    def history(self, user_id: str) -> list[Event]:
        mine = [(e.timestamp, n, e) for n, e in enumerate(self.log, 1) if e.user_id == user_id]
        return [e for _, _, e in sorted(mine)]


def test_incremental_folds_equal_whole_folds_on_random_logs():
    rng = np.random.default_rng(0)
    store, cache = ListStore(), HistoryCache(ListStore())
    cache.store = store
    for _ in range(300):
        user = f"u{rng.integers(3)}"
        for _ in range(rng.integers(1, 4)):  # a batch; timestamps repeat and go backwards
            t = float(rng.integers(0, 20))
            if rng.random() < 0.3:
                store.log.append(Event(user, f"i{rng.integers(8)}", "watch", None, t))
            else:
                value = float(rng.integers(1, 11)) / 2
                store.log.append(Event(user, f"i{rng.integers(8)}", "rating", value, t))
        for who in ("u0", "u1", "u2", "nobody"):
            got, want = cache.state(who), user_state(store.history(who), None)
            assert got.history == want.history and got.events == want.events
            assert got.stats.keys() == want.stats.keys()
            for key, value in want.stats.items():
                assert got.stats[key] == pytest.approx(value, rel=1e-12)


def test_a_later_watch_keeps_the_latest_rating_through_the_cache(store):
    cache = HistoryCache(store)
    store.append([rating("u", "a", 10, 5.0), Event("u", "a", "watch", None, 20)])
    assert cache.state("u").stats["rating_mean"] == 5.0
    # A rating stored late, timed between the two: it is now the latest rating of "a".
    store.append([rating("u", "a", 15, 3.0)])
    state = cache.state("u")
    assert state.history == ["a"] and state.stats["rating_mean"] == 3.0
    assert state == user_state(store.history("u"), None)
