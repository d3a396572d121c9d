import math

import numpy as np
import pytest

from ranking.metrics import graded_ndcg, weighted_pairwise_loss


def test_graded_ndcg_by_hand():
    gains = {"a": 5.0, "b": 3.0}
    assert graded_ndcg(["a", "b", "c"], gains) == pytest.approx(1.0)
    # b, c, a: DCG = 3/1 + 0 + 5/2 = 5.5; ideal 5/1 + 3/log2(3)
    assert graded_ndcg(["b", "c", "a"], gains) == pytest.approx(5.5 / (5 + 3 / math.log2(3)))
    assert graded_ndcg(["c"], gains, k=1) == 0.0
    assert graded_ndcg(["a"], {}) == 0.0
    # A repeat keeps its rank with no gain: b at rank 3 is outside the top 2.
    assert graded_ndcg(["x", "x", "b"], gains, k=2) == 0.0
    assert graded_ndcg(["a", "a", "b"], gains, k=3) == pytest.approx(
        (5 + 3 / 2) / (5 + 3 / math.log2(3))
    )
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            graded_ndcg(["a"], gains, k=k)


def test_weighted_pairwise_loss_by_hand():
    items = ["a", "b", "c", "d"]
    gains = {"a": 4.0, "c": 1.0}
    # a (score 1) is beaten by both negatives b (3) and d (2): 1.0; c (score 5) by none: 0.0
    loss = weighted_pairwise_loss(items, np.array([1.0, 3.0, 5.0, 2.0]), gains)
    assert loss == pytest.approx((4 * 1.0 + 1 * 0.0) / 5)
    assert weighted_pairwise_loss(["a"], np.array([1.0]), gains) is None
    # a tie counts one half: a (2) against b (2) and d (0)
    tie = weighted_pairwise_loss(["a", "b", "d"], np.array([2.0, 2.0, 0.0]), {"a": 1.0})
    assert tie == pytest.approx(0.25)


def test_repeats_count_once_and_nan_scores_count_as_wrong():
    assert graded_ndcg(["a", "a", "b"], {"a": 5.0}) == pytest.approx(1.0)
    loss = weighted_pairwise_loss(["p", "n"], np.array([np.nan, 1.0]), {"p": 1.0})
    assert loss == 1.0
