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
from towers.splits import Split, chronological

ScoreFn = Callable[[Sequence[str]], np.ndarray]
"""``score(user_ids) -> scores`` of shape ``(len(user_ids), len(item_ids))``."""
EventScoreFn = Callable[[Sequence[str], np.ndarray], np.ndarray]
"""``score(user_ids, timestamps) -> scores``: each query asked at its own time, from the user's
training interactions strictly before it (:class:`HistoryIndex`)."""


class HistoryIndex:
    """Each user's training interactions in time order, to read the history a query asked at a
    given time would have had: the interactions strictly before it.

    Parameters
    ----------
    interactions : pandas.DataFrame
        ``user_id``, ``item_id``, ``timestamp`` rows (the training log).
    """

    def __init__(self, interactions: pd.DataFrame) -> None:
        ordered = chronological(interactions)
        self._by_user = {
            str(user): (group["timestamp"].to_numpy(), group["item_id"].astype(str).to_numpy())
            for user, group in ordered.groupby("user_id", sort=False)
        }

    def before(
        self, user_ids: Sequence[str], timestamps: np.ndarray, max_history: int | None = None
    ) -> list[list[str]]:
        """Item IDs of each ``(user, time)`` query's history, oldest first: the user's
        interactions with a timestamp strictly below ``time``, the last ``max_history`` of them
        (all when None). An unknown user has an empty history."""
        if len(user_ids) != len(timestamps):
            raise ValueError(
                f"user_ids and timestamps differ in length: {len(user_ids)} vs {len(timestamps)}"
            )
        empty = (np.empty(0, np.int64), np.empty(0, dtype=object))
        out = []
        for user, when in zip(user_ids, timestamps, strict=True):
            times, items = self._by_user.get(str(user), empty)
            end = int(np.searchsorted(times, when, side="left"))
            start = 0 if max_history is None else max(0, end - max_history)
            out.append(items[start:end].tolist())
        return out


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


def evaluate_top_k_accuracy_at_events(
    score_at: EventScoreFn, item_ids: Sequence[str], split: Split, k: int = 100,
    batch_size: int = 1024,
) -> float:  # fmt: skip
    """Top-``k`` accuracy with every test row its own query, asked at the row's timestamp.

    The TFRS tutorials score each test row as one query (their context-feature models give it
    the row's timestamp). Here the query is what the model would have been asked at that moment:
    the user's training interactions strictly before it, at that time. No later interaction of
    the user and no test row reaches a query, and, as in :func:`evaluate_top_k_accuracy`, seen
    items are not excluded and rows with an item outside ``item_ids`` count as misses.
    """
    index = {str(i): n for n, i in enumerate(item_ids)}
    test = split.test.reset_index(drop=True)
    hits = 0.0
    for start in range(0, len(test), batch_size):
        part = test.iloc[start : start + batch_size]
        scores = score_at(part["user_id"].astype(str).tolist(), part["timestamp"].to_numpy())
        targets = part["item_id"].astype(str).map(index)
        known = targets.notna().to_numpy()
        if known.any():
            ranked = top_k(np.array(scores, dtype=np.float64)[known], k)
            hits += top_k_accuracy(ranked, targets[known].to_numpy(np.int64)) * known.sum()
    return float(hits / len(test)) if len(test) else 0.0


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
        self.train = train
        self._history_index: HistoryIndex | None = None
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
        histories = [self.histories.get(str(u), []) for u in user_ids]
        ages = np.array([self.query_age.get(str(u), 0.0) for u in user_ids], np.float32)
        return self.scores_for(histories, user_ids, ages)

    def at(self, user_ids: Sequence[str], timestamps: np.ndarray) -> np.ndarray:
        """Scores for queries asked at ``timestamps`` (an :data:`EventScoreFn`): each user's
        training history strictly before the time, and the example age of that time (clipped at
        0, the end of the training window)."""
        if self._history_index is None:
            self._history_index = HistoryIndex(self.train.interactions)
        histories = self._history_index.before(user_ids, timestamps, self.model.config.max_history)
        ages = example_age(np.asarray(timestamps, np.float64), self.model.time_window)
        return self.scores_for(histories, user_ids, np.maximum(ages, 0.0))

    def scores_for(
        self, histories: Sequence[Sequence[str]], user_ids: Sequence[str], ages: np.ndarray
    ) -> np.ndarray:
        """Scores of every item for queries with these histories (oldest first), users (their
        features) and example ages."""
        inputs = query_inputs(
            histories,
            max_history=self.model.config.max_history,
            user_features=self.users,
            user_ids=np.asarray(user_ids, dtype=str),
            example_age=ages,
        )
        return self.model.logits(self.model(inputs)).numpy()
