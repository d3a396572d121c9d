"""What the cold-start benchmarks share: user vectors asked at a time, scoring a list against
protocol cold-user-k's relevant items, training counts, and the onboarding sets.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from towers.examples import example_age
from towers.features import UserFeatures, query_inputs
from towers.metrics import retrieval_metrics, top_k

K = 5  # issue 6's target is set at cold-user-5


def user_vectors(model, histories, times, users: UserFeatures | None, user_ids) -> np.ndarray:
    """``[u, 1]`` rows for histories asked at ``times`` (epoch seconds)."""
    inputs = query_inputs(
        [list(h) for h in histories], max_history=model.config.max_history,
        user_features=users, user_ids=np.asarray(user_ids, dtype=str),
        example_age=example_age(np.asarray(times, np.float64), model.time_window),
    )  # fmt: skip
    vectors = model(inputs).numpy()
    return np.concatenate([vectors, np.ones((len(vectors), 1), np.float32)], axis=1)


def relevant_sets(index: dict, relevant) -> list[set[int]]:
    """Each user's relevant items as row indices. Items nobody watched in training (not in
    ``index``) stay relevant, as placeholders that no ranking can hit (indices below -1; -1 is
    :func:`top_k`'s padding): protocol cold-user-k makes *all* the rest relevant."""
    out = []
    for items in relevant:
        distinct = set(map(str, items))
        known = {index[i] for i in distinct if i in index}
        out.append(known | {-2 - j for j in range(len(distinct) - len(known))})
    return out


def rank_scores(scores: np.ndarray, index: dict, histories, relevant) -> dict:
    exclude = [np.array([index[i] for i in h if i in index], np.int64) for h in histories]
    ranked = top_k(scores.astype(np.float64), 50, exclude)
    rel = relevant_sets(index, relevant)
    out = retrieval_metrics(ranked, rel, ks=(10, 50))
    return {k: round(v, 4) for k, v in out.items() if k != "hr@10"}


def train_counts(frame: pd.DataFrame, item_ids: list[str]) -> np.ndarray:
    counts = frame["item_id"].astype(str).value_counts()
    return counts.reindex(item_ids).fillna(0).to_numpy(np.float64)


def cold_scorer(model, times: dict, users: UserFeatures | None):
    """``scores_for(histories, k) -> (user ids, scores)``: each held-out user's query is asked
    just after their ``k``-th event (at their first event for ``k = 0``)."""
    matrix = model.item_matrix()

    def scores_for(histories: dict, at: int) -> tuple[list[str], np.ndarray]:
        ids = sorted(histories)
        when = [times[u][min(at, len(times[u])) - 1 if at else 0] for u in ids]
        vectors = user_vectors(model, [histories[u] for u in ids], when, users, ids)
        return ids, vectors @ matrix.T

    return scores_for


def onboarding_sets(watched: dict, first: dict, offered: list, rate: int = 5):
    """``(picked, union, relevant)`` per user: what each user rates going down ``offered``
    (what they watched of it, in list order, up to ``rate``), that and their ``first`` items,
    and the rest of what they ``watched``, which both are scored on."""
    picked = {u: [i for i in offered if i in set(w)][:rate] for u, w in watched.items()}
    union = {u: set(first[u]) | set(picked[u]) for u in watched}
    relevant = {u: [i for i in w if i not in union[u]] for u, w in watched.items()}
    return picked, union, relevant
