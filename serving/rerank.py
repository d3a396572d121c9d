"""The second stage: rescore the generator's candidates with the ranking network.

``Recommender`` retrieves ``num_candidates`` (default 100) items and hands them here with what
it knows about the query (history, rating count and mean, time of the last event, demographics).
The ranker's features are built exactly as in training (``ranking.impressions``), except that no
impressions are logged offline, so previous impressions are 0. Items are returned by
``exp(logit)``, the paper's serving score (Covington et al. 2016, Sec. 4.2), where the logit is
the ranker's serving logit (:meth:`ranking.model.Ranker.serving_logit`: the ranking head plus
``tower_score_weight`` times the generator's score).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ranking.artefact import load_rank_scorer
from ranking.scorer import RankScorer
from towers.examples import PAD
from towers.features import DEMOGRAPHIC_COLUMNS

RANKER_DIR = "ranker"  # inside the tower artefact: written by `nextwatch train-ranker`
#: Items placed from metadata that a loaded ranker has room for before its tables are copied.
RESERVED_ITEMS = 1024


class Reranker:
    """Ranks one query's candidates.

    Parameters
    ----------
    scorer : RankScorer
    popularity : mapping of str to float
        Training ratings per item (the ranker's popularity feature at serving time).
    clock : callable
        Seconds since the epoch, for "time since the last watch" (``time.time`` by default).
        For a model trained on an old log (MovieLens), the wall clock puts every user years
        after their last rating, at the top of the feature's training range.
    """

    def __init__(
        self,
        scorer: RankScorer,
        popularity: Mapping[str, float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.scorer = scorer
        self.popularity = dict(popularity)
        self.clock = clock
        self.max_history = scorer.config.max_history
        self.has_demographics = bool(scorer.demographic_vocabularies)
        # One request of two unknown items builds the scorer's serving tables (RankScorer's
        # first-layer split) now, at load, instead of in the first user's request.
        self.rerank(["\0warm-up-a", "\0warm-up-b"], [0.0, 0.0], [], {}, {}, 1)
        # Then room for items placed from metadata, so that placing them copies no table.
        scorer.reserve(RESERVED_ITEMS)

    def add_items(self, items: pd.DataFrame) -> None:
        """Items placed from metadata at run time (``item_id``, ``genres``, ``year``): the
        ranker scores them with their genres and year (:meth:`RankScorer.add_items`), and with
        no training ratings (popularity 0)."""
        years = (
            [None if pd.isna(y) else float(y) for y in items["year"]]
            if "year" in items
            else [None] * len(items)
        )
        self.scorer.add_items(items["item_id"].astype(str).tolist(), list(items["genres"]), years)

    def rerank(
        self,
        item_ids: Sequence[str],
        scores: Sequence[float],
        history: Sequence[str],
        stats: Mapping[str, float],
        features: Mapping[str, object],
        k: int,
    ) -> tuple[list[str], list[float]]:
        """The top ``k`` of ``item_ids`` (in the generator's order, with its ``scores``) by
        ranker score ``exp(serving logit)``."""
        n = len(item_ids)
        if n == 0:
            return [], []
        tail = [str(i) for i in history[-self.max_history :]]
        row = np.array([[PAD] * (self.max_history - len(tail)) + tail], dtype=object)
        last = stats.get("last_timestamp", math.nan)
        count = stats.get("rating_count", math.nan)
        inputs: dict[str, np.ndarray] = {
            "item_id": np.asarray(item_ids, dtype=object),
            "history": row,
            "tower_score": np.asarray(scores, np.float32),
            "tower_rank": np.arange(1, n + 1, dtype=np.float32),
            # One user's: one row each (RankScorer's one_user).
            "time_since_last": np.array([self.clock() - last], np.float32),
            "prev_impressions": np.zeros(1, np.float32),
            "user_count": np.array([count if np.isfinite(count) else len(history)], np.float32),
            "user_mean": np.array([stats.get("rating_mean", math.nan)], np.float32),
            "item_popularity": np.array(
                [self.popularity.get(i, 0.0) for i in item_ids], np.float32
            ),
        }
        if self.has_demographics:
            for col in DEMOGRAPHIC_COLUMNS:
                inputs[col] = np.array([str(features.get(col) or "")], dtype=object)
        logits = self.scorer(inputs, rating=False, one_user=True)["serving_logit"]
        order = np.argsort(-logits, kind="stable")[:k]
        return [str(item_ids[j]) for j in order], [float(np.exp(logits[j])) for j in order]


def load_reranker(
    directory: Path, version: str, popularity: Mapping[str, float], artefact: Path | None = None
) -> Reranker | None:
    """The ranker in ``directory/ranker`` (None if there is none), checked against the version
    of the tower it reranks; ``artefact`` names the artefact to retrain in the error."""
    if not (directory / RANKER_DIR / "config.json").exists():
        return None
    scorer, tower_version = load_rank_scorer(directory / RANKER_DIR)
    if tower_version != version:
        raise ValueError(
            f"{directory / RANKER_DIR} was trained for tower {tower_version}, not {version}: "
            f"retrain it with `nextwatch train-ranker --artefact {artefact or directory}`"
        )
    return Reranker(scorer, popularity)
