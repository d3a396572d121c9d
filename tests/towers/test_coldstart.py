"""Cold-start splits, onboarding order and cold-item metrics, on hand-checked cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from towers.coldstart import (
    cold_item_metrics,
    cold_item_split,
    cold_user_split,
    held_out,
    onboarding_order,
    per_user_auc,
)


def test_held_out_depends_on_the_set_of_ids_and_the_seed_only():
    ids = ["3", "1", "2", "10", "1"]
    chosen = held_out(ids, 0.5, seed=7)
    assert len(chosen) == 2 and chosen <= {"1", "2", "3", "10"}
    assert held_out(["10", "2", "3", "1"], 0.5, seed=7) == chosen
    assert len(held_out(ids, 0.1, seed=7)) == 1  # ceil(0.4)
    with pytest.raises(ValueError, match="fraction"):
        held_out(ids, 1.0, seed=7)


def test_cold_user_split_keeps_each_held_out_user_whole(three_user_log):
    split = cold_user_split(three_user_log, fraction=0.3, seed=7)  # ceil(0.9) = 1 user
    cold_users = set(split.cold["user_id"])
    assert len(cold_users) == 1
    assert cold_users.isdisjoint(split.train["user_id"])
    assert len(split.train) + len(split.cold) == len(three_user_log)


def test_first_k_is_the_oldest_items_and_the_rest_is_relevant():
    log = pd.DataFrame(
        {"user_id": ["u"] * 4 + ["v"] * 2, "item_id": list("dcbaxy"),
         "rating": 4.0, "timestamp": [4, 3, 2, 1, 1, 2]}
    )  # fmt: skip
    split = cold_user_split(log, fraction=0.9, seed=0)  # both users are held out
    history, relevant = split.first_k(3)
    assert history == {"u": ["a", "b", "c"]} and relevant == {"u": ["d"]}  # v has only 2
    history, relevant = split.first_k(0)
    assert history == {"u": [], "v": []} and relevant["v"] == ["x", "y"]


def test_cold_item_split_removes_every_interaction_of_the_held_out_items(three_user_log):
    train, held, items = cold_item_split(three_user_log, fraction=0.3, seed=11)
    assert len(items) == 1
    assert set(held["item_id"]) == set(items)
    assert not set(train["item_id"]) & set(items)
    assert len(train) + len(held) == len(three_user_log)


VECTORS = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [-1.0, 0.0]])
POPULARITY = np.array([100.0, 90.0, 50.0, 10.0])


def test_onboarding_is_popularity_order_without_diversity():
    assert onboarding_order(VECTORS, POPULARITY, 4, diversity=0.0).tolist() == [0, 1, 2, 3]


def test_onboarding_skips_a_near_duplicate_of_a_picked_item():
    # By hand (p = log popularity scaled to [0, 1]: 1, .953, .692, 0): item 0 first; then
    # item 2 (.346 + .25) beats item 3 (0 + .5) and the near-copy item 1 (.476 + 0); then item 1
    # (.476) beats item 3 (0 + .25).
    assert onboarding_order(VECTORS, POPULARITY, 4, diversity=0.5).tolist() == [0, 2, 1, 3]
    assert onboarding_order(VECTORS, POPULARITY, 2, pool=2, diversity=0.5).tolist() == [0, 1]


def test_onboarding_checks_its_arguments():
    with pytest.raises(ValueError, match="n must"):
        onboarding_order(VECTORS, POPULARITY, 0)
    with pytest.raises(ValueError, match="diversity"):
        onboarding_order(VECTORS, POPULARITY, 2, diversity=2)
    with pytest.raises(ValueError, match="popularity"):
        onboarding_order(VECTORS, POPULARITY[:2], 2)


def test_auc_counts_ordered_pairs_and_half_ties():
    # Positives 0.9 and 0.3 against negatives 0.8 and 0.1: 2 + 1 of 4 pairs.
    assert per_user_auc([0.9, 0.8, 0.3, 0.1], [True, False, True, False]) == 0.75
    assert per_user_auc([1.0, 1.0], [True, False]) == 0.5
    assert np.isnan(per_user_auc([1.0, 2.0], [True, True]))


def test_cold_item_metrics_average_over_users():
    scores = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    positives = np.array([[True, False, False], [True, False, True]])
    out = cold_item_metrics(scores, positives, k=1)
    # User 1: AUC 1, recall@1 1. User 2: positives 1 and 3 vs negative 2: AUC 1/2; top-1 is
    # item 3, a hit: recall 1/2.
    assert out == {"auc": 0.75, "recall@1": 0.75, "users": 2.0}


def test_cold_item_metrics_refuse_a_user_without_positives_and_a_bad_k():
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(ValueError, match="positives row 1 has no positive"):
        cold_item_metrics(scores, np.array([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        cold_item_metrics(scores, np.array([[True, False], [False, True]]), k=-1)
