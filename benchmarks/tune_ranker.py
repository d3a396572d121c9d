"""Ranker sweeps behind the ranking notes: two-stage NDCG@10 per ranker setting, and rating-head
validation MSE per setting. Appends each result to ``benchmarks/results/tune_ranker.json``.

Two-stage (``two-stage DATASET CONFIGS [--validation]``): trains the benchmark tower on
temporal-user-20's train split (with ``--validation``: on the train part of a second
temporal-user-20 split carved from that train split, evaluated on its tail, so the test split is
never seen), simulates impressions once, then trains and evaluates one ranker per setting.
Without ``--validation`` it evaluates on the test split: a diagnostic, never used to pick
defaults. With ``--cross-fit`` the impressions come from copies of the tower that never saw
their users (``ranking.pipeline.cross_fit_retrieve``), so the ranker learns from out-of-sample
generator scores. Each ranker is also scored with every weight of ``TOWER_SCORE_WEIGHTS`` on the
generator's score (``RankerConfig.tower_score_weight``, applied after training, so one ranker
serves them all): ``relative_gain_by_tower_score_weight``.

Rating (``rating CONFIGS``): a second seeded 80/20 split inside random-80-20's train part
(ml-latest-small), one rating-head-only ranker per setting, validation MSE.

CONFIGS is a JSON list of ``[ranker_config_overrides, ranker_options_overrides]`` pairs, e.g.

    python benchmarks/tune_ranker.py two-stage ml-100k '[[{}, {}], [{"dropout": 0.3}, {}]]' \
        --validation
    python benchmarks/tune_ranker.py rating '[[{}, {"epochs": 2}], [{}, {"epochs": 8}]]'
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, git_commit

from ranking.impressions import rating_examples
from ranking.metrics import graded_ndcg
from ranking.model import RankerConfig
from ranking.pipeline import (
    candidate_examples,
    cross_fit_retrieve,
    predict,
    ranking_training_set,
    tower_retrieve,
)
from ranking.train import RankerOptions, train_ranker
from towers.artefact import save_artefact
from towers.movielens import load_movielens
from towers.presets import benchmark_config, benchmark_options
from towers.splits import chronological, make_split, random_80_20
from towers.train import train_tower

log = logging.getLogger("tune_ranker")
# Weights of the generator's score in the served score (logit + weight * tower score).
TOWER_SCORE_WEIGHTS = (0.0, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0)


def _ndcg(items: list, users: list, gains: dict, scores: list) -> float:
    """Mean graded NDCG@10 of each user's candidate ``items`` ordered by their ``scores``."""
    out = []
    for user_items, user, user_scores in zip(items, users, scores, strict=True):
        order = np.argsort(-user_scores, kind="stable")
        out.append(graded_ndcg([user_items[j] for j in order], gains[user]))
    return float(np.mean(out))


def two_stage(
    dataset: str,
    configs: list,
    validation: bool,
    data_dir: str | None,
    weights: tuple[float, ...] = TOWER_SCORE_WEIGHTS,
    cross_fit: bool = False,
) -> list[dict]:
    data = load_movielens(dataset, data_dir)
    if validation:
        data = data.with_interactions(make_split(data.interactions, "temporal-user-20").train)
    split = make_split(data.interactions, "temporal-user-20")
    train = data.with_interactions(split.train)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        options = benchmark_options(verbose=0, dataset=dataset)
        tower = train_tower(train, benchmark_config(dataset), options)
        tower_dir = save_artefact(tower, Path(tmp) / "tower", data=train)
        retriever, retrieve = tower_retrieve(tower_dir, train.users, 100)
        # Impressions from towers that never saw their users (cross_fit_retrieve), or in-sample.
        impressions = (
            cross_fit_retrieve(tower_dir, train, 100, Path(tmp)) if cross_fit else retrieve
        )
        examples = {}  # by label horizon: impressions are simulated once per horizon
        first = split.test.groupby("user_id")["timestamp"].min()
        history = chronological(split.train).groupby("user_id")["item_id"].agg(list)
        users = [u for u in first.index if u in history.index]
        padded = np.array(
            [[""] * max(0, 50 - len(history[u])) + history[u][-50:] for u in users], dtype=object
        )
        times = first.reindex(users).to_numpy()
        shown = retrieve(padded, [set(history[u]) for u in users], times,
                         np.asarray(users, dtype=object))  # fmt: skip
        rows = candidate_examples(users, [history[u] for u in users], shown, split.train, times, 50)
        groups = [np.flatnonzero(rows.group == g) for g in range(len(users))]
        items = [[str(i) for i in rows.item_id[sel]] for sel in groups]
        gains = {
            u: dict(zip(f["item_id"].astype(str), f["rating"].astype(float), strict=True))
            for u, f in split.test.groupby("user_id")
        }

        def ndcg(values: np.ndarray) -> float:
            return _ndcg(items, users, gains, [values[sel] for sel in groups])

        for overrides, option_overrides in configs:
            start = time.perf_counter()
            config, options = RankerConfig(**overrides), RankerOptions(**option_overrides)
            horizon = options.label_horizon
            if horizon not in examples:
                examples[horizon] = ranking_training_set(train, impressions, label_horizon=horizon)
            ranker, metrics = train_ranker(
                examples[horizon], retriever.index.item_ids, train.items, config, options,
                train.users,
            )  # fmt: skip
            scores = predict(ranker, rows, train.users)
            tower_scores = rows.numeric["tower_score"]

            c, r = ndcg(-rows.numeric["tower_rank"]), ndcg(scores["serving_logit"])
            by_weight = {
                w: round((ndcg(scores["logit"] + w * tower_scores) - c) / c, 4) for w in weights
            }
            out.append({
                "sweep": "two-stage", "dataset": dataset, "split": "validation" if validation
                else "test (diagnostic)", "config": overrides, "options": option_overrides,
                "cross_fit": cross_fit,
                "candidate_ndcg@10": round(c, 4), "ranked_ndcg@10": round(r, 4),
                "relative_gain": round((r - c) / c, 4), "loss": metrics["loss"],
                "relative_gain_by_tower_score_weight": by_weight,
                "seconds": round(time.perf_counter() - start, 1),
            })  # fmt: skip
            log.info("%s", out[-1])
    return out


def rating(configs: list, data_dir: str | None) -> list[dict]:
    small = load_movielens("ml-latest-small", data_dir)
    inner = random_80_20(random_80_20(small.interactions).train, seed=7)
    out = []
    for overrides, option_overrides in configs:
        start = time.perf_counter()
        config = RankerConfig(**overrides)
        rows = rating_examples(inner.train, max_history=config.max_history, context="all")
        ranker, metrics = train_ranker(
            rows, sorted(inner.train["item_id"].astype(str).unique()), small.items, config,
            RankerOptions(**option_overrides),
        )  # fmt: skip
        targets = rating_examples(inner.train, inner.test, max_history=config.max_history,
                                  context="all")  # fmt: skip
        pred = predict(ranker, targets)["rating"]
        mse = float(np.mean((pred - inner.test["rating"].to_numpy()) ** 2))
        out.append({
            "sweep": "rating", "split": "validation inside random-80-20 train",
            "config": overrides, "options": option_overrides, "val_mse": round(mse, 4),
            "loss": metrics["loss"], "seconds": round(time.perf_counter() - start, 1),
        })  # fmt: skip
        log.info("%s", out[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", choices=["two-stage", "rating"])
    parser.add_argument("args", nargs="+", help="two-stage: DATASET CONFIGS; rating: CONFIGS")
    parser.add_argument("--validation", action="store_true")
    parser.add_argument(
        "--cross-fit", action="store_true",
        help="two-stage: impressions from towers that never saw their users "
        "(ranking.pipeline.cross_fit_retrieve)",
    )  # fmt: skip
    parser.add_argument("--data-dir", help="MovieLens folder (default: $NEXTWATCH_DATA)")
    parser.add_argument(
        "--output", default=None, help="JSON path to append to (default: benchmarks/results/)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.sweep == "two-stage":
        results = two_stage(
            args.args[0], json.loads(args.args[1]), args.validation, args.data_dir,
            cross_fit=args.cross_fit,
        )  # fmt: skip
    else:
        results = rating(json.loads(args.args[0]), args.data_dir)
    path = Path(args.output) if args.output else RESULTS / "tune_ranker.json"
    history = json.loads(path.read_text()) if path.exists() else []
    commit = git_commit()
    history += [{"commit": commit, **r} for r in results]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(history, indent=2) + "\n")


if __name__ == "__main__":
    main()
