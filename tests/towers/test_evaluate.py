"""Queries asked at a given time: the history they see, and top-k accuracy per test row."""

import numpy as np
import pandas as pd
import pytest

from tests.conftest import planted_dataset
from towers.artefact import load_artefact
from towers.evaluate import HistoryIndex, TowerScorer, evaluate_top_k_accuracy_at_events
from towers.examples import example_age
from towers.features import UserFeatures, query_inputs
from towers.splits import Split


def _log(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


def test_history_before_is_strictly_earlier_in_time_order(three_user_log):
    # u1: a(10) b(20) c(30); u2: b(5) a(15); u3: c(7); the rows are shuffled in the fixture.
    index = HistoryIndex(three_user_log)
    got = index.before(["u1", "u1", "u1", "u1", "u2", "u9"], np.array([10, 11, 30, 31, 100, 50]))
    assert got == [[], ["a"], ["a", "b"], ["a", "b", "c"], ["b", "a"], []]
    assert index.before(["u1"], np.array([31]), max_history=2) == [["b", "c"]]


def test_history_before_breaks_time_ties_like_the_training_examples():
    index = HistoryIndex(_log([("u", "3", 1.0, 5), ("u", "2", 1.0, 5), ("u", "1", 1.0, 1)]))
    assert index.before(["u"], np.array([5])) == [["1"]]  # both rows at 5 are not yet seen
    assert index.before(["u"], np.array([6])) == [["1", "2", "3"]]


def test_history_before_rejects_mismatched_queries(three_user_log):
    with pytest.raises(ValueError, match="user_ids and timestamps"):
        HistoryIndex(three_user_log).before(["u1", "u2"], np.array([1]))


def test_top_k_accuracy_at_events_asks_each_row_at_its_time():
    items = ["x", "y", "z"]
    calls = []

    def score_at(user_ids, timestamps):
        calls.append((list(user_ids), list(timestamps)))
        scores = np.zeros((len(user_ids), 3))
        first = (np.asarray(timestamps) // 10) % 3
        scores[np.arange(len(user_ids)), first] = 1.0
        scores[np.arange(len(user_ids)), (first + 1) % 3] = 0.5  # the second choice
        return scores

    test = _log([("u", "x", 1.0, 0), ("u", "y", 1.0, 10), ("v", "z", 1.0, 10), ("v", "w", 1.0, 0)])
    split = Split("tfrs-80-20", _log([("u", "x", 1.0, 1)]), test)
    # k=1: rows 1 and 2 are hits; row 3's top item is y, not z; row 4's item is unknown (a miss).
    # k=2: row 3's second choice is z, a hit.
    assert evaluate_top_k_accuracy_at_events(score_at, items, split, k=1) == pytest.approx(0.5)
    assert calls == [(["u", "u", "v", "v"], [0, 10, 10, 0])]
    assert evaluate_top_k_accuracy_at_events(score_at, items, split, k=2, batch_size=3) == 0.75


def test_tower_scorer_at_sees_only_the_past(planted_artefact):
    # Planted user u0 watched A (t=1), B (t=2), then one of E..H (t=3).
    model = load_artefact(planted_artefact)
    data = planted_dataset()
    scorer = TowerScorer(model, data)
    at_two = scorer.at(["u0"], np.array([2]))
    expected = model.logits(
        model(
            query_inputs(
                [["A"]], max_history=model.config.max_history,
                user_features=UserFeatures.from_frame(data.users), user_ids=np.array(["u0"]),
                example_age=example_age(np.array([2.0]), model.time_window),
            )
        )
    ).numpy()  # fmt: skip
    np.testing.assert_allclose(at_two, expected, rtol=1e-6, atol=1e-6)
    # Asked after A only, the planted model's best guess is B (the user's real next watch).
    assert model.item_ids[int(np.argmax(at_two[0]))] == "B"
