"""Cold start: the ``PROTOCOLS.md`` cold-user and cold-item splits, onboarding items, and the
metrics of ranking a held-out set of cold items.

Arrays and frames in, arrays and floats out; no I/O.

* ``cold-user-k``: 20 % of users (``default_rng(7)``) are held out of training entirely. A held-out
  user's first ``k`` interactions in time are their history, given at request time; the rest are
  relevant.
* ``cold-item``: 10 % of items (``default_rng(11)``) are held out with all their interactions, then
  added from metadata only; each test user ranks the held-out items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from towers.checks import count_int, positive_int
from towers.splits import chronological, item_sort_key


def held_out(ids: Sequence[str] | np.ndarray, fraction: float, seed: int) -> set[str]:
    """``ceil(fraction * n)`` of the distinct ``ids``, chosen by ``default_rng(seed)``.

    The IDs are sorted first (as numbers when they all are), so the choice depends only on the set
    of IDs and the seed, not on file order.

    Raises
    ------
    ValueError
        If ``fraction`` is not in (0, 1), or ``seed`` is not an int >= 0.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    count_int("seed", seed)
    unique = pd.Series(pd.unique(pd.Series(ids, dtype=object).astype(str)))
    ordered = unique.iloc[np.argsort(item_sort_key(unique).to_numpy(), kind="stable")].tolist()
    size = int(np.ceil(fraction * len(ordered)))
    chosen = np.random.default_rng(seed).permutation(len(ordered))[:size]
    return {ordered[i] for i in chosen}


@dataclass(frozen=True)
class ColdUserSplit:
    """Training interactions of the warm users, and the held-out users' interactions.

    Attributes
    ----------
    train : pandas.DataFrame
        Every interaction of the warm (non-held-out) users.
    cold : pandas.DataFrame
        Every interaction of the held-out users, chronological per user.
    """

    train: pd.DataFrame
    cold: pd.DataFrame

    def first_k(self, k: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Each held-out user's first ``k`` items (the history, oldest first) and the rest
        (relevant). Users with no interaction after the first ``k`` are left out.

        Raises
        ------
        ValueError
            If ``k`` is not an int >= 0.
        """
        k = count_int("k", k)
        history, relevant = {}, {}
        for user, items in self.cold.groupby("user_id", sort=True)["item_id"]:
            items = items.astype(str).tolist()
            if len(items) > k:
                history[str(user)] = items[:k]
                relevant[str(user)] = items[k:]
        return history, relevant


def cold_user_split(
    interactions: pd.DataFrame, fraction: float = 0.2, seed: int = 7
) -> ColdUserSplit:
    """The cold-user split: hold out ``fraction`` of users (``default_rng(seed)``) entirely."""
    cold_users = held_out(interactions["user_id"], fraction, seed)
    is_cold = interactions["user_id"].astype(str).isin(cold_users)
    return ColdUserSplit(
        interactions[~is_cold].reset_index(drop=True), chronological(interactions[is_cold])
    )


def cold_item_split(
    interactions: pd.DataFrame, fraction: float = 0.1, seed: int = 11
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The cold-item split: ``(train, held-out interactions, held-out item IDs sorted)``."""
    cold_items = held_out(interactions["item_id"], fraction, seed)
    is_cold = interactions["item_id"].astype(str).isin(cold_items)
    ordered = sorted(cold_items, key=lambda i: (0, float(i), i) if _is_number(i) else (1, 0.0, i))
    return (
        interactions[~is_cold].reset_index(drop=True),
        interactions[is_cold].reset_index(drop=True),
        ordered,
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# -------------------------------------------------------------------------------------- onboarding
def onboarding_order(
    vectors: np.ndarray, popularity: np.ndarray, n: int, pool: int = 300, diversity: float = 0.7
) -> np.ndarray:
    """Items to ask a new user about: well known, and spread across the item space.

    A greedy maximal-marginal-relevance pick from the ``pool`` most popular items: each step takes
    the item maximising ``(1 - diversity) * p + diversity * (1 - s) / 2``, where ``p`` is its log
    popularity scaled to [0, 1] within the pool and ``s`` its largest cosine similarity to an item
    already picked. Popular items are ones a user can rate; dissimilar ones each tell the model
    something the others do not.

    Parameters
    ----------
    vectors : numpy.ndarray, shape (num_items, d)
        Item vectors (without the bias column).
    popularity : numpy.ndarray, shape (num_items,)
        Interaction counts.
    n : int
        Items to return (at most ``num_items``).
    pool : int
        How many of the most popular items are considered.
    diversity : float
        0 is pure popularity order; 1 ignores popularity after the first pick.

    Returns
    -------
    numpy.ndarray of int64
        Row indices into ``vectors``, in asking order.

    Raises
    ------
    ValueError
        If the shapes disagree or the catalogue is empty, a value is not finite, ``n`` or
        ``pool`` is not a positive integer, or ``diversity`` is not in [0, 1].
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    popularity = np.asarray(popularity, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) != len(popularity) or not len(vectors):
        raise ValueError("vectors must be (num_items >= 1, d) with one popularity per row")
    if not (np.isfinite(vectors).all() and np.isfinite(popularity).all()):
        raise ValueError("vectors and popularity must be finite (no NaN or infinity)")
    n = positive_int("n", n)
    pool = positive_int("pool", pool)
    if not 0 <= diversity <= 1:
        raise ValueError(f"diversity must be in [0, 1], got {diversity}")
    # Most popular first; ties by lower index.
    candidates = np.lexsort((np.arange(len(popularity)), -popularity))[: max(pool, n)]
    n = min(n, len(candidates))
    logp = np.log1p(popularity[candidates])
    span = logp.max() - logp.min()
    p = (logp - logp.min()) / span if span > 0 else np.ones_like(logp)
    unit = vectors[candidates]
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T  # one product for the pool, not one per step
    # (1 - s) / 2 maps cosine similarity to [0, 1]; before the first pick it is 1 for all.
    closest = np.full(len(candidates), -1.0)
    taken = np.zeros(len(candidates), dtype=bool)
    order = []
    for _ in range(n):
        gain = (1 - diversity) * p + diversity * (1 - closest) / 2
        gain[taken] = -np.inf
        best = int(np.argmax(gain))
        order.append(best)
        taken[best] = True
        np.maximum(closest, similarity[best], out=closest)
    return candidates[np.asarray(order, dtype=np.int64)]


# -------------------------------------------------------------------------------- cold-item metrics
def per_user_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """AUC of one user's scores over a candidate set: the probability that a random positive
    outscores a random negative, ties counting half. NaN if either class is empty.

    Parameters
    ----------
    scores : numpy.ndarray, shape (n,)
    positives : numpy.ndarray of bool, shape (n,)
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    n_pos = int(positives.sum())
    n_neg = len(scores) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def cold_item_metrics(scores: np.ndarray, positives: np.ndarray, k: int = 10) -> dict[str, float]:
    """Mean per-user AUC and Recall@k of ranking the held-out items.

    Parameters
    ----------
    scores : numpy.ndarray, shape (n_users, n_cold_items)
    positives : numpy.ndarray of bool, same shape
        Which held-out items each user interacted with (each row has at least one).
    k : int
        The recall cut-off.

    Raises
    ------
    ValueError
        If the arrays are not 2-D alike, ``k`` is not a positive integer, or a user has no
        positive.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    if scores.shape != positives.shape or scores.ndim != 2:
        raise ValueError(
            f"scores and positives must be (n_users, n_cold_items) alike, got {scores.shape} and "
            f"{positives.shape}"
        )
    k = positive_int("k", k)
    if positives.ndim == 2 and len(positives) and not positives.any(axis=1).all():
        empty = int(np.flatnonzero(~positives.any(axis=1))[0])
        raise ValueError(f"positives row {empty} has no positive: each user needs at least one")
    aucs = [per_user_auc(s, p) for s, p in zip(scores, positives, strict=True)]
    order = np.lexsort((np.arange(scores.shape[1])[None, :].repeat(len(scores), 0), -scores))
    top = order[:, :k]
    hits = np.take_along_axis(positives, top, axis=1).sum(axis=1)
    recall = hits / np.maximum(positives.sum(axis=1), 1)
    return {
        "auc": float(np.nanmean(aucs)) if len(aucs) else float("nan"),
        f"recall@{k}": float(recall.mean()) if len(recall) else float("nan"),
        "users": float(len(scores)),
    }
