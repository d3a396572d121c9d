"""The retrieval evaluation harness shared by nextwatch and every baseline.

A scorer maps test users to a score for every item of a fixed item list. The harness ranks all
items, excludes each user's training history, and computes the ``PROTOCOLS.md`` metrics. One harness
for every model means the numbers in one run are measured the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from towers.data import Dataset
from towers.examples import example_age, latest_histories
from towers.features import UserFeatures, query_inputs
from towers.metrics import retrieval_metrics, top_k, top_k_accuracy
from towers.model import CandidateTower
from towers.splits import Split

ScoreFn = Callable[[Sequence[str]], np.ndarray]
"""``score(user_ids) -> scores`` of shape ``(len(user_ids), len(item_ids))``."""


def _user_item_indices(frame: pd.DataFrame, index: dict[str, int]) -> dict[str, np.ndarray]:
    codes = frame["item_id"].map(index)
    frame = frame.assign(_code=codes).dropna(subset=["_code"])
    return {
        str(u): g.to_numpy(dtype=np.int64) for u, g in frame.groupby("user_id", sort=False)["_code"]
    }


def evaluate_retrieval(
    score: ScoreFn,
    item_ids: Sequence[str],
    split: Split,
    ks: Sequence[int] = (10, 50, 100, 300),
    batch_size: int = 512,
) -> dict[str, float]:
    """Rank all ``item_ids`` for each test user, excluding their train items; compute the metrics.

    Parameters
    ----------
    score : ScoreFn
        Scores for every item in ``item_ids`` order.
    item_ids : sequence of str
        The candidate items (the train items).
    split : Split
        Train (history, excluded) and test (relevant) interactions.
    ks : sequence of int
        Recall cut-offs.
    batch_size : int
        Users scored per call.

    Returns
    -------
    dict
        ``recall@K`` for K in ``ks``, ``ndcg@10``, ``hr@10``, ``users``.
    """
    index = {str(i): n for n, i in enumerate(item_ids)}
    seen = _user_item_indices(split.train, index)
    relevant_by_user = _user_item_indices(split.test, index)
    users = sorted(relevant_by_user)
    ranked_rows, relevant = [], []
    depth = max(ks)
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        scores = np.array(score(batch), dtype=np.float64)
        exclude = [seen.get(u, np.empty(0, np.int64)) for u in batch]
        ranked_rows.append(top_k(scores, depth, exclude))
        relevant.extend(set(relevant_by_user[u].tolist()) for u in batch)
    ranked = np.concatenate(ranked_rows) if ranked_rows else np.empty((0, depth), np.int64)
    return retrieval_metrics(ranked, relevant, ks)


def evaluate_top_k_accuracy(
    score: ScoreFn, item_ids: Sequence[str], split: Split, k: int = 100
) -> float:
    """The TFRS tutorial's top-k categorical accuracy: for every test row, is its item in the user's
    unfiltered top ``k`` (seen items are *not* excluded)?"""
    index = {str(i): n for n, i in enumerate(item_ids)}
    test = split.test[split.test["item_id"].isin(index)]
    users = sorted(test["user_id"].unique())
    ranked = {}
    for start in range(0, len(users), 512):
        batch = users[start : start + 512]
        rows = top_k(np.array(score(batch), dtype=np.float64), k)
        ranked.update(zip(batch, rows, strict=True))
    targets = test["item_id"].map(index).to_numpy()
    ranked_rows = np.stack([ranked[u] for u in test["user_id"]])
    # Rows whose item is not a train item can never be hit; they count as misses.
    hits = top_k_accuracy(ranked_rows, targets) * len(test)
    return float(hits / len(split.test))


class TowerScorer:
    """Scores all of a tower's items for users, from their training history and features.

    Parameters
    ----------
    model : CandidateTower
    train : Dataset
        The interactions that make each user's history (their last ``max_history`` items) and
        the user metadata.
    query_time : {"last-event", "end"}
        When each query is asked, which sets its example age: ``last-event`` is just after the
        user's last train interaction (an offline replay of users who lived at different
        times), ``end`` is the end of the training window (example age 0, live serving).
    """

    def __init__(
        self, model: CandidateTower, train: Dataset, query_time: str = "last-event"
    ) -> None:
        if query_time not in ("last-event", "end"):
            raise ValueError(f"query_time must be 'last-event' or 'end', got {query_time!r}")
        self.model = model
        self.histories = latest_histories(train.interactions, model.config.max_history)
        self.users = UserFeatures.from_frame(train.users)
        last = train.interactions.groupby("user_id")["timestamp"].max()
        self.query_age = (
            dict(
                zip(
                    last.index.astype(str),
                    example_age(last.to_numpy(), model.time_window),
                    strict=True,
                )
            )
            if query_time == "last-event"
            else {}
        )

    @property
    def item_ids(self) -> list[str]:
        return self.model.item_ids

    def __call__(self, user_ids: Sequence[str]) -> np.ndarray:
        inputs = query_inputs(
            [self.histories.get(str(u), []) for u in user_ids],
            max_history=self.model.config.max_history,
            user_features=self.users,
            user_ids=np.asarray(user_ids, dtype=str),
            example_age=np.array([self.query_age.get(str(u), 0.0) for u in user_ids], np.float32),
        )
        return self.model.logits(self.model(inputs)).numpy()
