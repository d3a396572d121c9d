"""The event store: one suite, run against SQLite and a real PostgreSQL server."""

from __future__ import annotations

import math
import threading
import time

import pandas as pd
import pytest

from serving.store import (
    AppendResult,
    Event,
    IdempotencyConflict,
    ItemRecord,
    StoreUnavailable,
    UserRecord,
    open_store,
    redact,
)


def rating(user: str, item: str, t: float, value: float = 4.0) -> Event:
    return Event(user, item, "rating", value, t)


def watch(user: str, item: str, t: float) -> Event:
    return Event(user, item, "watch", None, t)


def test_history_is_ordered_by_timestamp_then_sequence(store):
    first = store.append([rating("u1", "a", 20), rating("u1", "b", 10), watch("u2", "c", 5)])
    second = store.append([rating("u1", "c", 10, 2.5)])
    assert first == AppendResult([1, 2, 3], replayed=False)
    assert second == AppendResult([4], replayed=False)
    # b and c tie at t=10: b was stored first (seq 2 < 4).
    assert store.history("u1") == [
        rating("u1", "b", 10), rating("u1", "c", 10, 2.5), rating("u1", "a", 20)
    ]  # fmt: skip
    assert store.history("u2") == [watch("u2", "c", 5)]
    assert store.history("nobody") == []
    assert store.event_count() == 4 and store.user_count() == 2


def test_histories_has_every_requested_user(store):
    store.append([rating("u1", "a", 2), rating("u2", "b", 1), rating("u1", "c", 1)])
    out = store.histories(["u2", "u1", "nobody"])
    assert out == {
        "u2": [rating("u2", "b", 1)],
        "u1": [rating("u1", "c", 1), rating("u1", "a", 2)],
        "nobody": [],
    }
    assert store.histories([]) == {}


@pytest.mark.parametrize(
    "bad, field",
    [
        (Event("", "a", "rating", 4.0, 1.0), "user_id"),
        (Event("u1", "", "rating", 4.0, 1.0), "item_id"),
        (Event("u1", "a", "click", None, 1.0), "kind"),
        (Event("u1", "a", "rating", None, 1.0), "rating"),
        (Event("u1", "a", "watch", 3.0, 1.0), "rating"),
        (Event("u1", "a", "watch", None, math.nan), "timestamp"),
        (Event("u1", "a", "watch", None, math.inf), "timestamp"),
    ],
)
def test_an_invalid_event_writes_nothing_of_its_batch(store, bad, field):
    with pytest.raises(ValueError, match=rf"events\[1\]\.{field}"):
        store.append([rating("u1", "a", 1), bad, rating("u1", "b", 2)])
    assert store.event_count() == 0 and store.user_count() == 0
    with pytest.raises(ValueError, match="events is empty"):
        store.append([])


def test_a_replayed_key_returns_the_same_sequence_numbers_and_writes_nothing(store):
    events = [rating("u1", "a", 1), rating("u1", "b", 2)]
    first = store.append(events, idempotency_key="req-1", fingerprint="f1")
    again = store.append(events, idempotency_key="req-1", fingerprint="f1")
    assert first == AppendResult([1, 2], replayed=False)
    assert again == AppendResult([1, 2], replayed=True)
    assert store.event_count() == 2
    assert store.append([rating("u1", "c", 3)], idempotency_key="req-2").sequence_numbers == [3]


def test_a_reused_key_with_another_fingerprint_conflicts(store):
    store.append([rating("u1", "a", 1)], idempotency_key="req-1", fingerprint="f1")
    with pytest.raises(IdempotencyConflict, match="'req-1'"):
        store.append([rating("u1", "b", 2)], idempotency_key="req-1", fingerprint="f2")
    assert store.event_count() == 1
    with pytest.raises(ValueError, match="idempotency_key"):
        store.append([rating("u1", "b", 2)], idempotency_key="")


def _in_threads(target, n: int = 8) -> list:
    barrier, results, errors = threading.Barrier(n), [None] * n, []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = target(i)
        except Exception as exc:  # surfaced below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results


def test_concurrent_appends_with_one_key_write_once(store):
    events = [rating("u1", "a", 1), rating("u1", "b", 2), rating("u1", "c", 3)]
    results = _in_threads(lambda i: store.append(events, idempotency_key="k", fingerprint="f"))
    assert sorted(r.replayed for r in results) == [False] + [True] * 7
    assert {tuple(r.sequence_numbers) for r in results} == {(1, 2, 3)}
    assert store.event_count() == 3 and store.history("u1") == events


def test_concurrent_appends_get_distinct_sequence_numbers(store):
    results = _in_threads(lambda i: store.append([rating(f"u{i}", "a", 1), rating("x", "b", i)]))
    seqs = [s for r in results for s in r.sequence_numbers]
    assert sorted(seqs) == list(range(1, 17))
    assert all(r.sequence_numbers[1] == r.sequence_numbers[0] + 1 for r in results)
    assert store.event_count() == 16 and store.user_count() == 9
    assert [e.timestamp for e in store.history("x")] == list(range(8))


def test_users_are_created_on_first_event(store):
    before = time.time()
    store.append([rating("u1", "a", 1), rating("u1", "b", 2), rating("u2", "a", 3)])
    user = store.get_user("u1")
    assert user is not None and user.user_id == "u1"
    assert (user.age, user.gender, user.occupation, user.zip_prefix) == (None,) * 4
    assert before <= user.created_at <= time.time()
    assert store.user_count() == 2
    assert store.get_user("nobody") is None


def test_upsert_replaces_demographics_and_keeps_created_at(store):
    store.append([rating("u1", "a", 1)])
    created = store.get_user("u1").created_at
    stored = store.upsert_user(UserRecord("u1", age=30.0, gender="F", created_at=5.0))
    assert stored == UserRecord("u1", 30.0, "F", None, None, created)
    stored = store.upsert_user(UserRecord("u1", occupation="artist", zip_prefix="9"))
    assert stored == UserRecord("u1", None, None, "artist", "9", created)
    assert store.get_user("u1") == stored
    fresh = store.upsert_user(UserRecord("u2", age=20.0))
    assert fresh.age == 20.0 and fresh.created_at >= created and store.user_count() == 2
    with pytest.raises(ValueError, match="user_id"):
        store.upsert_user(UserRecord(""))


def test_events_since_pages_in_sequence_order(store):
    events = [rating("u1", "a", 50), watch("u2", "b", 10), rating("u1", "c", 30, 1.0)]
    store.append(events)
    store.append([watch("u3", "d", 20), rating("u2", "e", 40)])
    assert store.events_since(0, limit=2) == [(1, events[0]), (2, events[1])]
    assert store.events_since(2, limit=2) == [(3, events[2]), (4, watch("u3", "d", 20))]
    assert store.events_since(4) == [(5, rating("u2", "e", 40))]
    assert store.events_since(5) == []
    assert [seq for seq, _ in store.events_since()] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="sequence"):
        store.events_since(-1)
    with pytest.raises(ValueError, match="limit"):
        store.events_since(0, limit=-1)


def test_history_since_reads_one_users_newer_events_in_sequence_order(store):
    store.append([rating("u1", "a", 50), watch("u2", "b", 10)])
    store.append([rating("u1", "c", 30, 1.0), rating("u1", "a", 60, 2.0)])
    assert store.history_since("u1") == [
        (1, rating("u1", "a", 50)), (3, rating("u1", "c", 30, 1.0)), (4, rating("u1", "a", 60, 2.0))
    ]  # fmt: skip
    assert store.history_since("u1", 1) == [
        (3, rating("u1", "c", 30, 1.0)), (4, rating("u1", "a", 60, 2.0))
    ]  # fmt: skip
    assert store.history_since("u1", 4) == [] and store.history_since("nobody") == []
    assert store.history_since("u2", 0) == [(2, watch("u2", "b", 10))]
    with pytest.raises(ValueError, match="sequence"):
        store.history_since("u1", -1)


def test_import_events_loads_the_log_in_batches(store, three_user_log):
    log = three_user_log.astype({"rating": float})
    log.loc[3, "rating"] = math.nan  # u3's only event: a watch
    assert store.import_events(log, batch_size=4) == 6
    assert store.event_count() == 6 and store.user_count() == 3
    assert store.history("u1") == [
        rating("u1", "a", 10, 5.0), rating("u1", "b", 20), rating("u1", "c", 30, 2.0)
    ]  # fmt: skip
    assert store.history("u3") == [watch("u3", "c", 7)]
    # Imported events are live history: an append after them sorts among them by time.
    assert store.append([rating("u2", "c", 10)]).sequence_numbers == [7]
    assert [e.item_id for e in store.history("u2")] == ["b", "c", "a"]


def test_import_events_validates_the_whole_frame_first(store, three_user_log):
    with pytest.raises(ValueError, match="timestamp"):
        store.import_events(three_user_log.drop(columns="timestamp"))
    bad = three_user_log.astype({"timestamp": float})
    bad.loc[5, "timestamp"] = math.nan
    with pytest.raises(ValueError, match=r"timestamp.*\[5\]"):
        store.import_events(bad, batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        store.import_events(three_user_log, batch_size=0)
    assert store.event_count() == 0


def test_import_users_upserts_demographics(store):
    store.append([rating("u1", "a", 1)])
    created = store.get_user("u1").created_at
    frame = pd.DataFrame(
        {"user_id": ["u1", "u2", "u2"], "age": [25.0, math.nan, 40.0], "gender": ["M", None, "F"]}
    )
    assert store.import_users(frame) == 2  # u2 twice: the last row wins
    assert store.get_user("u1") == UserRecord("u1", 25.0, "M", None, None, created)
    u2 = store.get_user("u2")
    assert (u2.age, u2.gender, u2.occupation, u2.zip_prefix) == (40.0, "F", None, None)
    assert store.user_count() == 2
    # keep_existing (a seed): stored users keep theirs, new ones are added.
    seed = pd.DataFrame({"user_id": ["u1", "u3"], "age": [61.0, 19.0]})
    assert store.import_users(seed, keep_existing=True) == 2
    assert store.get_user("u1").age == 25.0 and store.get_user("u3").age == 19.0


def test_data_survives_close_and_reopen(store_url):
    with open_store(store_url) as store:
        store.append(
            [rating("u1", "a", 1), watch("u1", "b", 2)], idempotency_key="k", fingerprint="f"
        )
        store.upsert_user(UserRecord("u1", age=33.0))
    with open_store(store_url) as store:
        assert store.history("u1") == [rating("u1", "a", 1), watch("u1", "b", 2)]
        assert store.get_user("u1").age == 33.0
        replayed = store.append([rating("u1", "a", 1)], idempotency_key="k", fingerprint="f")
        assert replayed == AppendResult([1, 2], replayed=True)
        assert store.append([watch("u1", "c", 3)]).sequence_numbers == [3]


def test_a_closed_store_is_unavailable(store):
    store.ping()
    store.close()
    with pytest.raises(StoreUnavailable):
        store.history("u1")
    with pytest.raises(StoreUnavailable):
        store.ping()


def _dead_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on exit: nothing listens there


def test_an_unreachable_postgres_is_unavailable_quickly():
    pytest.importorskip("psycopg")
    url = f"postgresql://me:s3cret@127.0.0.1:{_dead_port()}/nextwatch"
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match="127.0.0.1") as caught:
        open_store(url, timeout=1.0)
    assert time.monotonic() - start < 5
    assert "s3cret" not in str(caught.value)


def test_a_crashed_postgres_is_unavailable_then_recovers_with_its_data(private_postgres):
    store = open_store(private_postgres.url, timeout=1.0)
    try:
        store.append([rating("u1", "a", 1)], idempotency_key="k", fingerprint="f")
        private_postgres.stop("immediate")  # a crash: no shutdown checkpoint
        with pytest.raises(StoreUnavailable):
            store.history("u1")
        private_postgres.start()
        # The pool drops the broken connections and reconnects within a few tries.
        deadline = time.monotonic() + 15
        while True:
            try:
                assert store.history("u1") == [rating("u1", "a", 1)]
                break
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
        replayed = store.append([rating("u1", "a", 1)], idempotency_key="k", fingerprint="f")
        assert replayed == AppendResult([1], replayed=True)
    finally:
        store.close()


@pytest.mark.parametrize(
    "url", ["mysql://host/db", "events.db", "sqlite://", "sqlite:///", "sqlite:///:memory:"]
)
def test_open_store_rejects_unknown_urls(url):
    with pytest.raises(ValueError, match="store URL"):
        open_store(url)


def test_a_relative_sqlite_path_creates_its_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///data/live/events.db") as store:
        store.append([rating("u1", "a", 1)])
        assert store.url == "sqlite:///data/live/events.db"
    assert (tmp_path / "data" / "live" / "events.db").is_file()


def test_urls_are_logged_without_passwords():
    assert redact("postgresql://me:s3cret@db:5432/nw?sslmode=require") == (
        "postgresql://me:***@db:5432/nw?sslmode=require"
    )
    assert "s3cret" not in redact("postgresql://me@db/nw?password=s3cret&host=/tmp")
    assert redact("sqlite:///a.db") == "sqlite:///a.db"


# ------------------------------------------------------------------------------------------ items
def test_items_upsert_and_follow_by_sequence(store):
    first, created = store.upsert_item(ItemRecord("n1", "New One", ("Comedy",), 2024, ("fun",)))
    assert created and first.sequence == 1 and first.created_at > 0
    assert first.genres == ("Comedy",) and first.tags == ("fun",) and first.year == 2024
    second, created = store.upsert_item(ItemRecord("n2", "New Two"))
    assert created and second.sequence == 2 and second.year is None and second.genres == ()
    assert [r.item_id for r in store.items_since(0)] == ["n1", "n2"]
    assert [r.item_id for r in store.items_since(1)] == ["n2"]
    # An update takes a new sequence number (so servers re-apply it) and keeps created_at.
    edited, created = store.upsert_item(ItemRecord("n1", "New One (2024)", ("Drama",)))
    assert not created and edited.sequence == 3 and edited.created_at == first.created_at
    assert store.items_since(2) == [edited]
    assert edited.title == "New One (2024)" and edited.genres == ("Drama",)
    assert store.items_since(3) == []


@pytest.mark.parametrize(
    "bad, field",
    [
        (ItemRecord("", "t"), "item_id"),
        (ItemRecord("n", "  "), "title"),
        (ItemRecord("n", "t", "Comedy"), "genres"),
        (ItemRecord("n", "t", ("",)), "genres"),
        (ItemRecord("n", "t", (), 1999.5), "year"),
        (ItemRecord("n", "t", (), None, (3,)), "tags"),
    ],
)
def test_a_malformed_item_is_refused_naming_the_field(store, bad, field):
    with pytest.raises(ValueError, match=f"item.{field}"):
        store.upsert_item(bad)
    assert store.items_since(0) == []
    with pytest.raises(ValueError, match="sequence"):
        store.items_since(-1)


def test_update_user_changes_only_the_fields_given_even_under_concurrent_updates(store):
    record, existed = store.update_user("u1", {"age": 30.0, "gender": "M"})
    assert not existed and (record.age, record.gender, record.occupation) == (30.0, "M", None)
    record, existed = store.update_user("u1", {"occupation": "artist", "gender": None})
    assert existed and (record.age, record.gender, record.occupation) == (30.0, None, "artist")
    with pytest.raises(ValueError, match=r"unknown user fields \['created_at'\]"):
        store.update_user("u1", {"created_at": 1.0})
    with pytest.raises(ValueError, match="user.age must be a number"):
        store.update_user("u1", {"age": "old"})
    assert store.get_user("u1") == record  # nothing changed by a refused update

    def writer(field: str, values: list) -> None:
        for value in values:
            store.update_user("u2", {field: value})

    threads = [
        threading.Thread(target=writer, args=("age", [float(i) for i in range(40)])),
        threading.Thread(target=writer, args=("zip_prefix", [str(i) for i in range(40)])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = store.get_user("u2")
    assert (final.age, final.zip_prefix) == (39.0, "39")  # neither update lost the other's
