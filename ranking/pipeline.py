"""Jobs over the ranker: simulate impressions from a tower artefact, train, and score candidates.

``nextwatch train-ranker`` and ``benchmarks/ranking.py`` call these.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ranking.artefact import save_ranker
from ranking.impressions import (
    RankingExamples,
    RetrieveFn,
    concat,
    popularity_before,
    rating_examples,
    simulate_impressions,
)
from ranking.model import RankerConfig
from ranking.train import RankerOptions, new_user_ranker_validated, ranker_inputs, train_ranker
from towers.artefact import NEW_USER_DIR, artefact_version, save_artefact
from towers.data import Dataset
from towers.examples import PAD, example_age
from towers.features import UserFeatures, query_inputs
from towers.model import TowerConfig
from towers.pipeline import DataSource, split_dataset
from towers.presets import NEW_USER_MAX_RATINGS
from towers.retrieval import Retriever
from towers.splits import per_user_tail
from towers.train import TrainOptions, TrainResult, train_tower

log = logging.getLogger(__name__)


def tower_retrieve(
    artefact: str | Path, users: pd.DataFrame | None, num_candidates: int
) -> tuple[Retriever, RetrieveFn]:
    """The tower artefact's retriever, and a :data:`RetrieveFn` that asks it as of each event
    time (example age from the event's timestamp, clipped to the serving value 0 after the
    training window)."""
    retriever = Retriever.from_artefact(artefact)
    window = tuple(json.loads((Path(artefact) / "config.json").read_text())["time_window"])
    features = UserFeatures.from_frame(users)
    known_only = retriever.encoder.known_only

    def retrieve(histories: np.ndarray, seen: list, times: np.ndarray, user_ids: np.ndarray):
        out = []
        for start in range(0, len(histories), 1024):
            part = slice(start, start + 1024)
            inputs = query_inputs(
                [known_only([i for i in row if i != PAD]) for row in histories[part]],
                max_history=retriever.encoder.max_history,
                user_features=features,
                user_ids=np.asarray(user_ids[part], dtype=str),
                example_age=np.maximum(example_age(times[part], window), 0.0),
            )
            got = retriever.retrieve(inputs, num_candidates, list(seen[part]))
            out += [(g.item_ids, g.scores) for g in got]
        return out

    return retriever, retrieve


def ranking_training_set(
    train: Dataset,
    retrieve: RetrieveFn,
    *,
    num_candidates: int = 100,
    max_history: int = 50,
    events_per_user: int | None = 20,
    seed: int = 0,
    label_mask: np.ndarray | None = None,
    negatives_per_impression: int | None = None,
    label_horizon: int = 1,
) -> RankingExamples:
    """Simulated impressions plus every training rating (as of its time) for the rating head."""
    impressions = simulate_impressions(
        train.interactions, retrieve, num_candidates=num_candidates, max_history=max_history,
        events_per_user=events_per_user, seed=seed, label_mask=label_mask,
        negatives_per_impression=negatives_per_impression, label_horizon=label_horizon,
    )  # fmt: skip
    ratings = rating_examples(train.interactions, max_history=max_history, context="before")
    log.info("%d impression rows, %d rating rows", len(impressions), len(ratings))
    return concat([impressions, ratings])


def train_ranker_job(
    tower_artefact: str | Path,
    train: Dataset,
    output: str | Path,
    config: RankerConfig | None = None,
    options: RankerOptions | None = None,
    num_candidates: int = 100,
    events_per_user: int | None = 20,
    holdout: bool = False,
    negatives_per_impression: int | None = None,
) -> dict:
    """Train a ranker for ``tower_artefact`` on ``train`` and save it at ``output``.

    Impressions come from the tower itself (in-sample). With ``holdout``, they are simulated on
    the last 20 % of each user's training events by a copy of the tower trained on the first
    80 % (see :func:`holdout_tower`), which measured worse on ml-100k (NDCG@10 0.194 against
    0.206 in-sample), so it is off by default.

    Raises
    ------
    ValueError
        If ``train`` has no interactions, or ``num_candidates`` or ``events_per_user`` is not
        an int >= 1 (``events_per_user`` None: every event).
    """
    if (
        isinstance(num_candidates, bool)
        or not isinstance(num_candidates, int)
        or num_candidates < 1
    ):
        raise ValueError(f"num_candidates must be an int >= 1, got {num_candidates!r}")
    if len(train.interactions) == 0:
        raise ValueError("train has no interactions: there are no impressions to learn from")
    if events_per_user is not None and (
        isinstance(events_per_user, bool) or not isinstance(events_per_user, int)
        or events_per_user < 1
    ):  # fmt: skip
        raise ValueError(
            f"events_per_user must be an int >= 1 or None (every event), got {events_per_user!r}"
        )
    config = config or RankerConfig()
    options = options or RankerOptions()
    retriever = Retriever.from_artefact(tower_artefact)
    with tempfile.TemporaryDirectory(prefix="nextwatch-holdout-") as tmp:
        if holdout:
            # Stacking: impressions come from a tower that never trained on their labels, as
            # at serving, so the ranker does not learn to over-trust in-sample tower scores.
            holdout_dir, label_mask = holdout_tower(tower_artefact, train, Path(tmp) / "tower")
            _, retrieve = tower_retrieve(holdout_dir, train.users, num_candidates)
        else:
            label_mask = None
            _, retrieve = tower_retrieve(tower_artefact, train.users, num_candidates)
        examples = ranking_training_set(
            train, retrieve, num_candidates=num_candidates, max_history=config.max_history,
            events_per_user=events_per_user, seed=options.seed, label_mask=label_mask,
            negatives_per_impression=negatives_per_impression, label_horizon=options.label_horizon,
        )  # fmt: skip
    ranker, metrics = train_ranker(
        examples, retriever.index.item_ids, train.items, config, options, train.users
    )
    impressions = {"num_candidates": num_candidates, "events_per_user": events_per_user}
    save_ranker(ranker, output, metrics, artefact_version(tower_artefact), options, impressions)
    return metrics


def _train_like(artefact: str | Path, data: Dataset) -> TrainResult:
    """Train the artefact's tower configuration, with its training options, on ``data``."""
    meta = json.loads((Path(artefact) / "config.json").read_text())
    options = {**meta["train_options"], "verbose": 0, "log_dir": None}
    return train_tower(data, TowerConfig(**meta["tower"]), TrainOptions(**options))


def holdout_tower(artefact: str | Path, train: Dataset, output: Path) -> tuple[Path, np.ndarray]:
    """Train the artefact's tower configuration on the first 80 % of each user's events of
    ``train``; returns its artefact and a mask (aligned with ``train.interactions``) of the
    held-out last 20 %, the events it never saw."""
    split = per_user_tail(train.interactions, "temporal-user-20")
    head = train.with_interactions(split.train)
    result = _train_like(artefact, head)
    keys = ["user_id", "item_id", "timestamp"]
    held = train.interactions[keys].merge(
        split.test[keys].drop_duplicates().assign(_held=True), on=keys, how="left"
    )["_held"]
    return save_artefact(result, output, data=head), held.fillna(False).to_numpy(bool)


def cross_fit_retrieve(
    artefact: str | Path, train: Dataset, num_candidates: int, work: Path, folds: int = 2
) -> RetrieveFn:
    """A :data:`RetrieveFn` whose answer for each user comes from a copy of the artefact's tower
    trained on the other users' events only (``folds`` groups of users, seeded): cross-fitting.

    The tower has no per-user parameter, so a user's impressions from a tower that never saw
    that user are out of sample, as the candidates of a served request are, while every event
    of every user still yields impressions (a time holdout, :func:`holdout_tower`, only has a
    user's last events). Each copy trains on ``(folds - 1) / folds`` of the events.

    On ml-100k's validation carve it did not raise the ranker's gain over the candidate order
    (+1.6 % against +1.5 % in-sample, at the best tower-score weight; README, "Ranking"), so
    only ``benchmarks/tune_ranker.py --cross-fit`` uses it.

    Raises
    ------
    ValueError
        If ``folds`` < 2.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    seed = json.loads((Path(artefact) / "config.json").read_text())["train_options"]["seed"]
    user_ids = train.interactions["user_id"].astype(str)
    users = np.sort(user_ids.unique())
    order = np.random.default_rng(seed).permutation(len(users))
    fold_of = dict(zip(users[order], np.arange(len(users)) % folds, strict=True))
    row_folds = user_ids.map(fold_of).to_numpy()
    retrievers = []
    for f in range(folds):
        part = train.with_interactions(train.interactions[row_folds != f])
        directory = save_artefact(_train_like(artefact, part), work / f"fold-{f}", data=part)
        retrievers.append(tower_retrieve(directory, train.users, num_candidates)[1])

    def retrieve(histories: np.ndarray, seen: list, times: np.ndarray, user_ids: np.ndarray):
        folds_of_rows = np.array([fold_of[str(u)] for u in user_ids])
        out: list = [None] * len(histories)
        for f, fn in enumerate(retrievers):
            rows = np.flatnonzero(folds_of_rows == f)
            if len(rows):
                got = fn(histories[rows], [seen[r] for r in rows], times[rows], user_ids[rows])
                for r, g in zip(rows, got, strict=True):
                    out[r] = g
        return out

    return retrieve


# A new user's impressions (train_new_user_ranker_job): up to 5 per user, each at one of the
# user's first NEW_USER_MAX_RATINGS events, from a tower cross-fitted over 2 folds of users.
NEW_USER_IMPRESSIONS = {"num_candidates": 100, "events_per_user": 5, "folds": 2}
ALL_LATER = 10**9  # a label horizon past any user's last event: every later watch is a positive


def train_new_user_ranker_job(
    tower_artefact: str | Path,
    train: Dataset,
    output: str | Path,
    config: RankerConfig | None = None,
    options: RankerOptions | None = None,
    num_candidates: int = NEW_USER_IMPRESSIONS["num_candidates"],
    events_per_user: int = NEW_USER_IMPRESSIONS["events_per_user"],
    folds: int = NEW_USER_IMPRESSIONS["folds"],
) -> dict:
    """Train the ranker for the new-user tower at ``tower_artefact`` and save it at ``output``.

    Its impressions are the ones a new user gets: the tower's top ``num_candidates`` at up to
    ``events_per_user`` events among each user's first ``towers.presets.NEW_USER_MAX_RATINGS``
    (a history of 1 to 15 items), whose positives are every shown item the user watched later
    (protocol cold-user-k's relevance; ``options.label_horizon`` is not used). The candidates
    come from copies of the tower trained without the user (:func:`cross_fit_retrieve`), as a
    new user's are out of sample; the rating head learns from every training rating.
    ``benchmarks/cold_plateau.py --parts served-cold-ranker`` measured it against the benchmark
    preset's ranker on the new-user tower's candidates (README, "Cold start").

    Raises
    ------
    ValueError
        If ``num_candidates``, ``events_per_user`` < 1 or ``folds`` < 2.
    """
    if num_candidates < 1 or events_per_user < 1:
        raise ValueError(
            f"num_candidates and events_per_user must be >= 1, got {num_candidates}, "
            f"{events_per_user}"
        )
    config = config or RankerConfig()
    options = options or RankerOptions()
    retriever = Retriever.from_artefact(tower_artefact)
    with tempfile.TemporaryDirectory(prefix="nextwatch-cross-fit-") as tmp:
        retrieve = cross_fit_retrieve(tower_artefact, train, num_candidates, Path(tmp), folds)
        impressions = simulate_impressions(
            train.interactions, retrieve, num_candidates=num_candidates,
            max_history=config.max_history, events_per_user=events_per_user, seed=options.seed,
            label_horizon=ALL_LATER, max_position=NEW_USER_MAX_RATINGS,
        )  # fmt: skip
    ratings = rating_examples(train.interactions, max_history=config.max_history, context="before")
    log.info("new-user ranker: %d impression rows, %d rating rows", len(impressions), len(ratings))
    ranker, metrics = train_ranker(
        concat([impressions, ratings]), retriever.index.item_ids, train.items, config, options,
        train.users,
    )  # fmt: skip
    save_ranker(ranker, output, metrics, artefact_version(tower_artefact), options,
                {"num_candidates": num_candidates, "events_per_user": events_per_user,
                 "new_user": True, "max_position": NEW_USER_MAX_RATINGS,
                 "folds": folds})  # fmt: skip
    return metrics


def train_ranker_for_artefact(
    source: DataSource,
    artefact: str | Path,
    output: str | Path | None = None,
    config: RankerConfig | None = None,
    options: RankerOptions | None = None,
    num_candidates: int = 100,
    events_per_user: int | None = 20,
    new_user_ranker: bool | None = None,
) -> dict:
    """Train the ranker on the data and split the tower artefact was trained on.

    With ``new_user_ranker`` (None: :func:`ranking.train.new_user_ranker_validated` for the
    artefact's dataset), an artefact with a new-user tower (``new_user/``) also gets that
    tower's own ranker (:func:`train_new_user_ranker_job`, with the same configuration and
    options) in ``new_user/ranker``, when ``output`` is the default.

    Raises
    ------
    ValueError
        If ``source`` is not the data the tower was trained on (its checksum differs).
    """
    artefact = Path(artefact)
    meta = json.loads((artefact / "config.json").read_text())
    data = source.load()
    if meta["data_checksum"] != data.checksum:
        raise ValueError(
            f"{artefact} was trained on {meta['dataset']} (checksum {meta['data_checksum'][:12]}), "
            f"not on {data.name} (checksum {data.checksum[:12]}): give the same data (the same "
            "files and column flags, --items and --users included)"
        )
    protocol = json.loads((artefact / "metrics.json").read_text()).get("protocol", "none")
    train, _ = split_dataset(data, protocol)
    metrics = train_ranker_job(
        artefact, train, output or artefact / "ranker", config, options, num_candidates,
        events_per_user,
    )  # fmt: skip
    second = artefact / NEW_USER_DIR
    if new_user_ranker is None:
        new_user_ranker = new_user_ranker_validated(meta.get("dataset"))
    if new_user_ranker and output is None and (second / "config.json").exists():
        log.info("training the new-user tower's ranker into %s", second / "ranker")
        metrics["new_user"] = train_new_user_ranker_job(
            second, train, second / "ranker", config, options
        )
    return metrics


def candidate_examples(
    user_ids: Sequence[str],
    histories: Sequence[Sequence[str]],
    candidates: Sequence[tuple[list[str], list[float]]],
    train: pd.DataFrame,
    query_times: np.ndarray,
    max_history: int,
) -> RankingExamples:
    """Ranker rows for each user's candidate list, with features as of ``query_times``
    (no previous impressions: none are logged offline)."""
    counts = train.groupby("user_id").agg(n=("rating", "size"), mean=("rating", "mean"),
                                          last=("timestamp", "max"))  # fmt: skip
    counts.index = counts.index.astype(str)
    rows_user, rows_item, rows_score, rows_rank, rows_hist, rows_time, group = (
        [] for _ in range(7)
    )
    for g, (user, history, (ids, scores), t) in enumerate(
        zip(user_ids, histories, candidates, query_times, strict=True)
    ):
        tail = list(history)[-max_history:]
        padded = [PAD] * (max_history - len(tail)) + tail
        for rank, (item, score) in enumerate(zip(ids, scores, strict=True), 1):
            rows_user.append(user)
            rows_item.append(item)
            rows_score.append(score)
            rows_rank.append(rank)
            rows_hist.append(padded)
            rows_time.append(t)
            group.append(g)
    users = np.asarray(rows_user, dtype=object)
    stats = counts.reindex(users.astype(str))
    times = np.asarray(rows_time, np.int64)
    n = len(users)
    return RankingExamples(
        user_id=users,
        item_id=np.asarray(rows_item, dtype=object),
        history=np.asarray(rows_hist, dtype=object).reshape(n, max_history),
        numeric={
            "tower_score": np.asarray(rows_score, np.float64),
            "tower_rank": np.asarray(rows_rank, np.float64),
            "time_since_last": times - stats["last"].to_numpy(np.float64),
            "prev_impressions": np.zeros(n),
            "user_count": stats["n"].fillna(0).to_numpy(np.float64),
            "user_mean": stats["mean"].to_numpy(np.float64),
            "item_popularity": popularity_before(train, np.asarray(rows_item), times),
        },
        label=np.full(n, np.nan, np.float32),
        weight=np.ones(n, np.float32),
        rating=np.full(n, np.nan, np.float32),
        group=np.asarray(group, np.int64),
    )


def predict(ranker, examples: RankingExamples, users: pd.DataFrame | None = None) -> dict:
    """``{"logit", "serving_logit", "rating"}`` arrays for ``examples``, in batches."""
    inputs = ranker_inputs(
        examples, UserFeatures.from_frame(users), ratings=ranker.config.rated_bag
    )
    parts: dict[str, list[np.ndarray]] = {"logit": [], "serving_logit": [], "rating": []}
    for start in range(0, len(examples), 8192):
        out = ranker({k: v[start : start + 8192] for k, v in inputs.items()})
        for name, values in parts.items():
            values.append(out[name].numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}
