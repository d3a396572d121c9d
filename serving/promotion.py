"""Guarded promotion: a candidate version serves only if it does not regress against the serving
version on the same recent holdout.

The holdout is the most recent slice of the event log: for each user with events in it, those
events are relevant and the user's earlier events are the history given at request time (as a
live request would see them). Both versions rank every item for every holdout user through the
Python retrieval API (the candidate generator's order), and a candidate whose Recall@k or
NDCG@10 falls more than ``tolerance`` (relative) below the serving version's is refused; the
refusal is logged with both sets of numbers. The candidate must not have been trained on the
holdout, or the comparison would flatter it: ``nextwatch retrain --home`` trains on the events
before it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from serving.api import Recommender
from serving.api_types import Query
from serving.registry import Registry
from towers.metrics import retrieval_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holdout:
    """Recent events to compare versions on.

    Attributes
    ----------
    since : int
        The earliest timestamp in the holdout.
    histories : list of list of str
        Each holdout user's items before ``since``, oldest first.
    relevant : list of set of str
        Each holdout user's items from ``since`` on that are not in their history: serving
        leaves history items out of the ranking, so a re-watch could never be hit and would
        only make the holdout look measurable. Users left with none are dropped.
    """

    since: int
    histories: list[list[str]] = field(default_factory=list)
    relevant: list[set[str]] = field(default_factory=list)
    rows: np.ndarray | None = None  # which rows of the log are held out (boolean mask)

    def __len__(self) -> int:
        return len(self.relevant)


def recent_holdout(
    interactions: pd.DataFrame, fraction: float = 0.05, max_events: int | None = None
) -> Holdout:
    """The last ``fraction`` of ``interactions`` in time order (at least one event, at most
    ``max_events``; events at the same time in log order) as a :class:`Holdout`.

    Raises
    ------
    ValueError
        If ``fraction`` is not in (0, 1), the log is empty, or ``max_events`` < 1. (A holdout
        with no user left, when every held-out event is a re-watch, is returned empty:
        :func:`guarded_promote` refuses to decide on it.)
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if interactions.empty:
        raise ValueError("interactions is empty: there is nothing to hold out")
    if max_events is not None and max_events < 1:
        raise ValueError(f"max_events must be >= 1, got {max_events}")
    size = max(1, int(fraction * len(interactions)))
    if max_events is not None:
        size = min(size, max_events)
    order = np.argsort(interactions["timestamp"].to_numpy(), kind="stable")
    held = np.zeros(len(interactions), dtype=bool)
    held[order[len(order) - size :]] = True
    frame = interactions.assign(_held=held, _order=np.argsort(order, kind="stable"))
    histories, relevant = [], []
    for _, group in frame.sort_values("_order").groupby("user_id", sort=True):
        mask = group["_held"].to_numpy()
        if mask.any():
            items = group["item_id"].astype(str).to_numpy()
            history = items[~mask].tolist()
            new = set(items[mask].tolist()) - set(history)
            if new:
                histories.append(history)
                relevant.append(new)
    since = int(interactions["timestamp"].to_numpy()[order[len(order) - size]])
    return Holdout(since, histories, relevant, held)


def holdout_metrics(recommender: Recommender, holdout: Holdout, k: int = 100) -> dict[str, float]:
    """Recall@k and NDCG@10 of the candidate generator's order on ``holdout`` (history items
    excluded, as in serving)."""
    queries = [Query(history=h, k=k, rank=False) for h in holdout.histories]
    ranked_ids = [r.item_ids for r in recommender.recommend_batch(queries)]
    index: dict[str, int] = {}
    width = max((len(r) for r in ranked_ids), default=0)
    ranked = np.full((len(ranked_ids), max(width, 1)), -1, np.int64)
    for row, ids in enumerate(ranked_ids):
        ranked[row, : len(ids)] = [index.setdefault(i, len(index)) for i in ids]
    relevant = [{index.setdefault(i, len(index)) for i in rel} for rel in holdout.relevant]
    out = retrieval_metrics(ranked, relevant, ks=(k,))
    return {f"recall@{k}": out[f"recall@{k}"], "ndcg@10": out["ndcg@10"], "users": out["users"]}


@dataclass(frozen=True)
class Decision:
    """The outcome of a guarded promotion, with the numbers it was decided on."""

    version: str
    promoted: bool
    candidate: dict[str, float]
    serving: dict[str, float] | None
    regressed: list[str]
    tolerance: float
    reason: str = ""  # why a candidate that did not regress was still refused


def check_tolerance(tolerance: float) -> None:
    """Refuse a tolerance that is not a finite number in [0, 1] (naming it)."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float):
        raise ValueError(f"tolerance must be a finite number in [0, 1], got {tolerance!r}")
    if not (math.isfinite(tolerance) and 0 <= tolerance <= 1):
        raise ValueError(f"tolerance must be a finite number in [0, 1], got {tolerance}")


def guarded_promote(
    registry: Registry,
    version: str,
    holdout: Holdout,
    tolerance: float = 0.02,
    k: int = 100,
    metrics: Sequence[str] | None = None,
) -> Decision:
    """Promote ``version`` unless it regresses beyond ``tolerance`` (relative) on ``holdout``
    against the serving version; with nothing serving yet, promote it.

    Raises
    ------
    KeyError
        If ``version`` is not published.
    ValueError
        If ``tolerance`` is not a number in [0, 1] or the holdout is empty.

    A candidate is also refused when the holdout cannot tell the versions apart (both score 0
    on every metric): a broken model must not pass on a holdout that measures nothing.
    """
    check_tolerance(tolerance)
    if len(holdout) == 0:
        raise ValueError(
            "holdout has no users with a new item (every held-out event re-watches an item "
            "of the user's history): cannot compare versions"
        )
    if version not in registry.versions():
        raise KeyError(f"version {version!r} is not published in {registry.root}")
    metrics = list(metrics or (f"recall@{k}", "ndcg@10"))
    candidate = holdout_metrics(Recommender.load(registry.root / version), holdout, k)
    current: Path | None = registry.current()
    serving = None if current is None else holdout_metrics(Recommender.load(current), holdout, k)
    regressed = (
        []
        if serving is None
        else [m for m in metrics if candidate[m] < serving[m] * (1 - tolerance)]
    )
    numbers = {m: (round(candidate[m], 4), serving and round(serving[m], 4)) for m in metrics}
    if (
        serving is not None
        and not regressed
        and all(candidate[m] == 0 and serving[m] == 0 for m in metrics)
    ):
        reason = "the holdout cannot tell the versions apart (both score 0 on every metric)"
        log.warning("promotion of %s refused: %s, on %d holdout users: %s",
                    version, reason, len(holdout), numbers)  # fmt: skip
        return Decision(version, False, candidate, serving, [], tolerance, reason)
    if regressed:
        log.warning(
            "promotion of %s refused: %s regressed beyond %.1f %% against %s on %d holdout "
            "users (candidate, serving): %s",
            version, regressed, 100 * tolerance, current.name if current else None,
            len(holdout), numbers,
        )  # fmt: skip
        return Decision(version, False, candidate, serving, regressed, tolerance)
    registry.promote(version)
    log.info("promoted %s (candidate, serving on %d users): %s", version, len(holdout), numbers)
    return Decision(version, True, candidate, serving, [], tolerance)
