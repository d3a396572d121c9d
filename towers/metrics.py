"""Retrieval metrics of ``PROTOCOLS.md``: Recall@K, NDCG@10 (binary gains), HR@K.

Arrays in, floats out.

``ranked`` holds each user's top items (indices, best first); ``relevant`` each user's set of test
item indices. Users with no relevant items are skipped, as the protocol defines the means over test
users.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from towers.checks import positive_int


def _check_k(k: object) -> int:
    return positive_int("k", k)


def recall_at_k(ranked: np.ndarray, relevant: Sequence[set[int]], k: int) -> float:
    """Mean over users of ``|top-k ∩ relevant| / |relevant|``."""
    k = _check_k(k)
    values = [
        len(set(row[:k].tolist()) & rel) / len(rel)
        for row, rel in zip(ranked, relevant, strict=True)
        if rel
    ]
    return float(np.mean(values)) if values else 0.0


def hit_rate_at_k(ranked: np.ndarray, relevant: Sequence[set[int]], k: int) -> float:
    """Fraction of users with at least one relevant item in the top ``k``."""
    k = _check_k(k)
    values = [
        bool(set(row[:k].tolist()) & rel) for row, rel in zip(ranked, relevant, strict=True) if rel
    ]
    return float(np.mean(values)) if values else 0.0


def ndcg_at_k(ranked: np.ndarray, relevant: Sequence[set[int]], k: int) -> float:
    """Mean NDCG@k with binary gains: ``DCG = sum_{r<k} rel_r / log2(r + 2)``, divided by the DCG of
    an ideal list with ``min(|relevant|, k)`` hits first. An item repeated in a row gains at
    its first rank only (so NDCG stays <= 1)."""
    k = _check_k(k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    values = []
    for row, rel in zip(ranked, relevant, strict=True):
        if not rel:
            continue
        items = row[:k].tolist()
        gains = np.array(
            [item in rel and item not in items[:r] for r, item in enumerate(items)], dtype=float
        )
        ideal = discounts[: min(len(rel), k)].sum()
        values.append(float(gains @ discounts[: len(gains)]) / ideal)
    return float(np.mean(values)) if values else 0.0


def top_k(scores: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first; ties within the returned ``k``
    are ordered by lower index. Which of several items tied *at* the ``k``-th score make the cut
    is ``numpy.argpartition``'s choice (deterministic for given input; a full stable sort of
    every row would cost O(n log n) per user on million-item catalogues).

    Parameters
    ----------
    scores : numpy.ndarray, shape (n_users, n_items)
        Modified in place where ``exclude`` is given (excluded items are set to -inf).
    k : int
        Clipped to ``n_items``.
    exclude : sequence of int arrays, optional
        Per row, item indices that may not be returned (the user's training history).

    Returns
    -------
    numpy.ndarray, shape (n_users, min(k, n_items))
        Item indices; -1 where a row has fewer than ``k`` items with a score above -inf (an
        excluded item fills no slot, so it can never count as a hit).

    Raises
    ------
    ValueError
        If ``k`` is not a positive integer.
    """
    k = _check_k(k)
    if exclude is not None:
        for row, items in enumerate(exclude):
            scores[row, items] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    # lexsort: primary key score descending, secondary the item index ascending
    order = np.lexsort((part, -part_scores), axis=1)
    ranked = np.take_along_axis(part, order, axis=1)
    ranked[np.take_along_axis(part_scores, order, axis=1) == -np.inf] = -1
    return ranked


def retrieval_metrics(
    ranked: np.ndarray, relevant: Sequence[set[int]], ks: Sequence[int] = (10, 50, 100, 300)
) -> dict[str, float]:
    """Recall@K for each K in ``ks``, NDCG@10 and HR@10, keyed ``recall@10`` etc."""
    out = {f"recall@{k}": recall_at_k(ranked, relevant, k) for k in ks}
    out["ndcg@10"] = ndcg_at_k(ranked, relevant, 10)
    out["hr@10"] = hit_rate_at_k(ranked, relevant, 10)
    out["users"] = float(sum(1 for rel in relevant if rel))
    return out


def top_k_accuracy(ranked: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of (query, target) rows whose target is in that query's ranked list (the TFRS
    tutorial's ``factorized_top_k/top_100_categorical_accuracy``)."""
    return float(np.mean([t in set(row.tolist()) for row, t in zip(ranked, targets, strict=True)]))
