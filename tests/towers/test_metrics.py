import numpy as np
import pytest

from towers.metrics import hit_rate_at_k, ndcg_at_k, recall_at_k, top_k, top_k_accuracy

RANKED = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
RELEVANT = [{2, 9}, {8}]


def test_recall_by_hand():
    # user 0: {2} of {2, 9} in top 2 -> 1/2; user 1: 8 not in top 2 -> 0
    assert recall_at_k(RANKED, RELEVANT, 2) == pytest.approx(0.25)
    assert recall_at_k(RANKED, RELEVANT, 4) == pytest.approx((0.5 + 1.0) / 2)


def test_ndcg_by_hand():
    # user 0: hit at rank 2 -> 1/log2(3); ideal has 2 hits -> 1 + 1/log2(3)
    u0 = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    # user 1: hit at rank 4 -> 1/log2(5); ideal 1
    u1 = 1 / np.log2(5)
    assert ndcg_at_k(RANKED, RELEVANT, 4) == pytest.approx((u0 + u1) / 2)


def test_hit_rate_and_users_without_relevant_items_are_skipped():
    assert hit_rate_at_k(RANKED, RELEVANT, 2) == 0.5
    assert recall_at_k(RANKED, [{2}, set()], 2) == 1.0


def test_top_k_excludes_and_breaks_ties_by_index():
    scores = np.array([[0.1, 0.9, 0.9, 0.5], [1.0, 0.0, 0.0, 0.0]])
    assert top_k(scores.copy(), 3).tolist() == [[1, 2, 3], [0, 1, 2]]
    assert top_k(scores.copy(), 2, [np.array([1]), np.array([], int)]).tolist() == [[2, 3], [0, 1]]
    assert top_k(scores.copy(), 10).shape == (2, 4)


def test_top_k_accuracy():
    assert top_k_accuracy(RANKED, np.array([3, 9])) == 0.5


def test_an_excluded_item_fills_no_slot_and_repeats_gain_once():
    from towers.metrics import retrieval_metrics

    # 5 items; the user's history A, B, C is excluded; the test item is A again (a re-watch).
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    ranked = top_k(scores, 10, [np.array([0, 1, 2])])
    assert ranked.tolist() == [[3, 4, -1, -1, -1]]
    assert retrieval_metrics(ranked, [{0}], ks=(10,))["recall@10"] == 0.0
    assert ndcg_at_k(np.array([[7, 7, 8]]), [{7}], 10) == 1.0  # not 1 + 1/log2(3)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            top_k(scores, bad)
        with pytest.raises(ValueError, match="k must be a positive integer"):
            ndcg_at_k(ranked, [{0}], bad)
