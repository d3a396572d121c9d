import numpy as np
import pandas as pd

from towers.examples import PAD, build_examples, latest_histories, pad_histories


def test_exact_examples_from_three_user_log(three_user_log):
    ex = build_examples(three_user_log, max_history=2, max_examples_per_user=None)
    got = sorted(
        (u, tuple(h), lab, int(t))
        for u, h, lab, t in zip(ex.user_id, ex.history, ex.label, ex.timestamp, strict=True)
    )
    assert got == [
        ("u1", (PAD, PAD), "a", 10),
        ("u1", (PAD, "a"), "b", 20),
        ("u1", ("a", "b"), "c", 30),
        ("u2", (PAD, PAD), "b", 5),
        ("u2", (PAD, "b"), "a", 15),
        ("u3", (PAD, PAD), "c", 7),
    ]


def test_history_window_keeps_only_the_most_recent(three_user_log):
    ex = build_examples(three_user_log, max_history=1, max_examples_per_user=None)
    by_label = {
        (u, lab): tuple(h) for u, h, lab in zip(ex.user_id, ex.history, ex.label, strict=True)
    }
    assert by_label[("u1", "c")] == ("b",)


def test_no_history_contains_its_label_or_anything_later(three_user_log):
    ex = build_examples(three_user_log, max_history=5, max_examples_per_user=None)
    when = {(r.user_id, r.item_id): r.timestamp for r in three_user_log.itertuples()}
    for user, history, label, t in zip(ex.user_id, ex.history, ex.label, ex.timestamp, strict=True):
        assert label not in history
        assert all(when[(user, h)] < t for h in history if h != PAD)


def test_horizon_labels_stay_ahead_of_the_history(three_user_log):
    ex = build_examples(three_user_log, max_history=5, max_examples_per_user=None, label_horizon=3)
    when = {(r.user_id, r.item_id): r.timestamp for r in three_user_log.itertuples()}
    for user, history, t in zip(ex.user_id, ex.history, ex.timestamp, strict=True):
        assert all(when[(user, h)] < t for h in history if h != PAD)


def test_horizon_labels_are_uniform_over_the_watches_left():
    # 2,000 users who watch A then B: the example at A (empty history) draws its label from the
    # next min(4, 2) watches, A or B, with equal chance (not B for every draw past the end).
    frame = pd.DataFrame(
        [(f"u{u}", item, 1.0, t) for u in range(2000) for t, item in enumerate("AB")],
        columns=["user_id", "item_id", "rating", "timestamp"],
    )
    ex = build_examples(frame, max_examples_per_user=None, label_horizon=4, seed=0)
    first = ex.label[np.array([h[-1] == PAD for h in ex.history])]
    assert len(first) == 2000 and abs((first == "A").mean() - 0.5) < 0.05


def test_example_age_is_zero_at_the_end_and_one_at_the_start(three_user_log):
    ex = build_examples(three_user_log, max_history=2, max_examples_per_user=None)
    ages = dict(zip(ex.timestamp.tolist(), ex.example_age.tolist(), strict=True))
    assert ages[30] == 0.0 and ages[5] == 1.0
    assert np.isclose(ages[20], (30 - 20) / 25)


def test_cap_per_user_is_respected_and_seeded(three_user_log):
    a = build_examples(three_user_log, max_history=2, max_examples_per_user=1, seed=3)
    b = build_examples(three_user_log, max_history=2, max_examples_per_user=1, seed=3)
    assert sorted(a.user_id.tolist()) == ["u1", "u2", "u3"]
    assert a.label.tolist() == b.label.tolist()


def test_first_watch_can_be_left_out(three_user_log):
    ex = build_examples(
        three_user_log, max_history=2, max_examples_per_user=None, include_empty_history=False
    )
    assert len(ex) == 3 and all(h[-1] != PAD for h in ex.history)


def test_serving_histories_are_the_latest_items(three_user_log):
    assert latest_histories(three_user_log, 2) == {"u1": ["b", "c"], "u2": ["b", "a"], "u3": ["c"]}
    padded = pad_histories([["x", "y", "z"], []], 2)
    assert padded.tolist() == [["y", "z"], [PAD, PAD]]


def test_new_user_examples_are_a_first_items_prefix_and_a_later_label(three_user_log):
    plain = build_examples(three_user_log, max_history=3)
    ex = build_examples(three_user_log, max_history=3, cold_examples_per_user=40, seed=3)
    # u3 has one event (no later label): only u1 and u2 get new-user examples.
    assert len(ex) == len(plain) + 2 * 40
    sequences = {"u1": ["a", "b", "c"], "u2": ["b", "a"]}
    seen_lengths = set()
    for history, label, user in zip(
        ex.history[len(plain) :], ex.label[len(plain) :], ex.user_id[len(plain) :], strict=True
    ):
        items = [i for i in history if i != PAD]
        sequence = sequences[user]
        assert items == sequence[: len(items)]  # the user's first items, in order
        assert label in sequence[len(items) :]  # a later watch, never one in the history
        seen_lengths.add(len(items))
    assert seen_lengths == {0, 1, 2}  # every prefix a user with 3 events can give
    assert ex.example_age.shape == (len(ex),) and ex.timestamp.shape == (len(ex),)


def test_the_example_age_is_the_positions_time_not_a_later_labels():
    frame = pd.DataFrame(
        {"user_id": ["u"] * 6, "item_id": list("abcdef"), "timestamp": [0, 10, 20, 30, 40, 50]}
    )
    window = (0, 100)
    ahead = build_examples(frame, label_horizon=4, time_window=window, seed=3)
    # Position p's request happens at p's event (10 p), whatever later label was drawn.
    positions = (ahead.history != "").sum(axis=1)
    np.testing.assert_allclose(ahead.example_age, (100 - 10 * positions) / 100, rtol=1e-6)
    cold = build_examples(frame, max_examples_per_user=1, cold_examples_per_user=20,
                          time_window=window, seed=5)  # fmt: skip
    m = (cold.history != "").sum(axis=1)[1:]  # the new-user examples: the first m items
    np.testing.assert_allclose(cold.example_age[1:], (100 - 10 * m) / 100, rtol=1e-6)
    assert (cold.timestamp[1:] >= 10 * m).all()  # their labels may lie further ahead


def test_seen_is_everything_before_the_examples_position(three_user_log):
    ex = build_examples(three_user_log, max_history=1, max_examples_per_user=None)
    seen = {
        (u, lab): ex.seen(j) for j, (u, lab) in enumerate(zip(ex.user_id, ex.label, strict=True))
    }
    # the bag holds one item, what the request excludes is the whole history before it
    assert seen == {
        ("u1", "a"): [], ("u1", "b"): ["a"], ("u1", "c"): ["a", "b"],
        ("u2", "b"): [], ("u2", "a"): ["b"], ("u3", "c"): [],
    }  # fmt: skip
    kept = ex.subset(ex.label == "c")
    assert sorted(kept.seen(j) for j in range(len(kept))) == [[], ["a", "b"]]


def test_a_new_user_examples_seen_is_its_history_and_a_horizon_labels_is_up_to_the_position():
    log = pd.DataFrame({"user_id": ["u"] * 6, "item_id": list("abcdef"), "timestamp": range(6)})
    cold = build_examples(log, max_examples_per_user=1, cold_examples_per_user=20, seed=3)
    for j in range(len(cold)):
        history = [h for h in cold.history[j] if h != PAD]
        assert cold.seen(j) == history and cold.label[j] not in history
    ahead = build_examples(log, max_examples_per_user=None, label_horizon=3, seed=1)
    for j in range(len(ahead)):
        assert ahead.seen(j) == [h for h in ahead.history[j] if h != PAD]
