"""Ranking-stage metrics: graded NDCG and the paper's weighted per-user pairwise loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from towers.checks import positive_int


def graded_ndcg(order: Sequence[str], gains: Mapping[str, float], k: int = 10) -> float:
    """NDCG@k of ``order`` with graded gains: DCG = sum of ``gains[item] / log2(rank + 1)``
    (rank from 1, gain 0 for items not in ``gains``); the ideal DCG sorts all of ``gains``. An
    item repeated in ``order`` counts at its first rank only; the repeat keeps its rank, with
    no gain, so it never pulls a later item into the top ``k``.

    Raises
    ------
    ValueError
        If ``k`` is not a positive integer.
    """
    k = positive_int("k", k)
    seen: set[str] = set()
    dcg = 0.0
    for r, item in enumerate(list(order)[:k]):
        if item not in seen:
            seen.add(item)
            dcg += gains.get(item, 0.0) / np.log2(r + 2)
    ideal = sorted(gains.values(), reverse=True)[:k]
    idcg = sum(g / np.log2(r + 2) for r, g in enumerate(ideal))
    return float(dcg / idcg) if idcg > 0 else 0.0


def weighted_pairwise_loss(
    items: Sequence[str], scores: np.ndarray, gains: Mapping[str, float]
) -> float | None:
    """Covington et al. (2016), Sec. 4.2: over the (positive, negative) pairs of one impression,
    the fraction ordered wrongly (the negative scores higher; a tie counts one half), each
    positive weighted by its gain. None when the impression has no positive or no negative. A
    pair with a NaN score counts as wrong: a broken scorer must not look perfect."""
    pos = [(s, gains[i]) for i, s in zip(items, scores, strict=True) if i in gains]
    neg = np.array([s for i, s in zip(items, scores, strict=True) if i not in gains], float)
    if not pos or not len(neg):
        return None

    def wrong_share(s: float) -> float:
        unordered = np.isnan(neg) | np.isnan(s)
        return float(np.where(unordered, 1.0, (neg > s) + 0.5 * (neg == s)).mean())

    wrong = sum(w * wrong_share(s) for s, w in pos)
    return wrong / sum(w for _, w in pos)
