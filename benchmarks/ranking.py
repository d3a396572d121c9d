"""Ranking benchmarks: two-stage quality on temporal-user-20, and rating error.

Two-stage (ml-latest-small and ml-100k, temporal-user-20): the tower (benchmark preset) is
trained on the train split; the ranker on impressions simulated from it on the same split. For
each test user the tower retrieves 100 unseen candidates from their train history (asked at the
time of their first test event); the ranker rescores them. Reported for the candidate order and
the ranked order: NDCG@10 with gain = the held-out rating (0 if the user did not rate the item;
the ideal DCG uses all the user's test ratings), and the paper's weighted per-user pairwise loss
(the rating-weighted fraction of (rated, unrated) candidate pairs ordered wrongly). Two serving
settings are chosen per dataset, together, on a temporal-user-20 split carved from the train
split (:func:`choose_settings`), never on the test split: the impressions' label horizon
(``RankerOptions.label_horizon``, among ``--label-horizons``, default ``LABEL_HORIZONS``) and
the weight of the generator's score in the served score (``RankerConfig.tower_score_weight``,
among ``--tower-score-weights``, default ``tune_ranker.TOWER_SCORE_WEIGHTS``). Each ranker
averages ``--members`` networks trained with consecutive seeds (``RankerConfig.members``; 2, as
``nextwatch serve`` trains it for MovieLens).

Rating error: random-80-20 on ml-latest-small (MSE) and the five ml100k-folds (mean RMSE), for
the ranker's rating head (trained on rating rows only, each row seeing the user's other train
ratings) in two configurations, the rating preset (``RATING_CONFIG``, epochs chosen on a
validation tenth of each training set) and the served ranker's default, next to a fastai-style
EmbeddingDotBias (``benchmarks/rating_baselines.py``).

    python benchmarks/ranking.py --data-dir ../shared/data     # ~45 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import numpy as np
from common import RESULTS, write_results
from rating_baselines import embedding_dot_bias
from tune_ranker import TOWER_SCORE_WEIGHTS
from tune_ranker import two_stage as tune_two_stage

from ranking.artefact import load_ranker
from ranking.impressions import rating_examples
from ranking.metrics import graded_ndcg, weighted_pairwise_loss
from ranking.model import RankerConfig
from ranking.pipeline import candidate_examples, predict, tower_retrieve, train_ranker_job
from ranking.train import RankerOptions, train_ranker
from towers.artefact import save_artefact
from towers.movielens import default_data_dir, load_movielens
from towers.presets import benchmark_config, benchmark_options
from towers.splits import chronological, make_split, ml100k_fold
from towers.train import train_tower

log = logging.getLogger("ranking")
# Impression label horizons the two-stage benchmark chooses from, per dataset, on validation.
LABEL_HORIZONS = (1, 30)


def two_stage(
    name: str,
    data_dir: str | None,
    work: Path,
    options: RankerOptions,
    negatives: int | None,
    holdout: bool = False,
    tower_score_weight: float = 0.0,
    chosen: dict | None = None,
    members: int = 1,
) -> dict:
    """One two-stage run at ``options`` (its seed, label horizon), ``tower_score_weight`` and
    ``members`` (rankers averaged); ``chosen`` is the validation choice
    (:func:`choose_settings`) they came from, recorded."""
    config = RankerConfig(tower_score_weight=tower_score_weight, members=members)
    data = load_movielens(name, data_dir)
    split = make_split(data.interactions, "temporal-user-20")
    train = data.with_interactions(split.train)
    start = time.perf_counter()
    result = train_tower(
        train, benchmark_config(name), benchmark_options(seed=options.seed, dataset=name)
    )
    tower_dir = save_artefact(result, work / f"{name}-{options.seed}-tower", data=train)
    tower_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ranker_metrics = train_ranker_job(
        tower_dir, train, work / f"{name}-{options.seed}-ranker", config=config, options=options,
        negatives_per_impression=negatives, holdout=holdout,
    )  # fmt: skip
    ranker_seconds = time.perf_counter() - start
    ranker = load_ranker(work / f"{name}-{options.seed}-ranker")

    test = split.test
    first_test = test.groupby("user_id")["timestamp"].min()
    ordered = chronological(split.train)
    histories = ordered.groupby("user_id")["item_id"].agg(list)
    users = [u for u in first_test.index if u in histories.index]
    _, retrieve = tower_retrieve(tower_dir, train.users, 100)
    hist_arrays = np.array(
        [[""] * max(0, 50 - len(histories[u])) + histories[u][-50:] for u in users], dtype=object
    )
    # Query at the user's first test event: what they had seen, and when they came back.
    times = first_test.reindex(users).to_numpy()
    candidates = retrieve(hist_arrays, [set(histories[u]) for u in users], times,
                          np.asarray(users, dtype=object))  # fmt: skip
    examples = candidate_examples(
        users, [histories[u] for u in users], candidates, split.train, times, 50
    )
    logits = predict(ranker, examples, train.users)["serving_logit"]
    gains_by_user = test.groupby("user_id").apply(
        lambda f: dict(zip(f["item_id"].astype(str), f["rating"].astype(float), strict=True))
    )
    ndcg_c, ndcg_r, pair_c, pair_r = [], [], [], []
    for g, user in enumerate(users):
        rows = np.flatnonzero(examples.group == g)
        items = [str(i) for i in examples.item_id[rows]]
        gains = gains_by_user[user]
        ranked = [items[j] for j in np.argsort(-logits[rows], kind="stable")]
        ndcg_c.append(graded_ndcg(items, gains))
        ndcg_r.append(graded_ndcg(ranked, gains))
        tower_scores = examples.numeric["tower_score"][rows]
        pc = weighted_pairwise_loss(items, tower_scores, gains)
        pr = weighted_pairwise_loss(items, logits[rows], gains)
        if pc is not None:
            pair_c.append(pc)
            pair_r.append(pr)
    out = {
        "dataset": name,
        "protocol": "temporal-user-20",
        "users": len(users),
        "candidates": 100,
        "candidate_order": {"ndcg@10": round(float(np.mean(ndcg_c)), 4),
                            "weighted_pairwise_loss": round(float(np.mean(pair_c)), 4)},
        "ranked_order": {"ndcg@10": round(float(np.mean(ndcg_r)), 4),
                         "weighted_pairwise_loss": round(float(np.mean(pair_r)), 4)},
        "users_with_pairs": len(pair_c),
        "tower_train_seconds": round(tower_seconds, 1),
        "ranker_train_seconds": round(ranker_seconds, 1),
        "ranker": ranker_metrics,
        "seed": options.seed,
        "label_horizon": options.label_horizon,
        "tower_score_weight": config.tower_score_weight,
        "members": config.members,
        "serving_validation": chosen,
    }  # fmt: skip
    c, r = out["candidate_order"]["ndcg@10"], out["ranked_order"]["ndcg@10"]
    out["ndcg_relative_gain"] = round((r - c) / c, 4) if c else None
    log.info("%s two-stage: %s", name, out)
    return out


def choose_settings(
    name: str,
    data_dir: str | None,
    options: RankerOptions,
    horizons: tuple[int, ...],
    weights: tuple[float, ...],
    members: int = 1,
) -> dict:
    """The impression label horizon and tower-score weight with the best two-stage NDCG@10 gain
    on a temporal-user-20 split carved from the train split (``tune_ranker.two_stage`` with
    validation), so the test split is never seen. One ranker per horizon; the weights are
    applied to its logits after training; each ranker averages ``members`` networks."""
    horizons, weights = horizons or (options.label_horizon,), weights or (0.0,)
    configs = [[{"members": members}, {**asdict(options), "label_horizon": h}] for h in horizons]
    rows = tune_two_stage(name, configs, validation=True, data_dir=data_dir, weights=weights)
    gains = {
        h: dict(row["relative_gain_by_tower_score_weight"])
        for h, row in zip(horizons, rows, strict=True)
    }
    best = max(((h, w) for h in gains for w in gains[h]), key=lambda hw: gains[hw[0]][hw[1]])
    log.info("%s: label horizon %d, tower-score weight %g (validation NDCG@10 gains %s)",
             name, *best, gains)  # fmt: skip
    return {
        "label_horizon": best[0],
        "tower_score_weight": best[1],
        "validation_ndcg_gain_by_horizon_and_weight": gains,
    }


# The rating preset: the rated bag over the user's last 200 ratings and a cosine learning rate,
# with the number of epochs (the schedule's length) chosen on a validation tenth of each training
# set: the head over-fits within a few epochs, and when differs by dataset.
RATING_CONFIG = RankerConfig(rated_bag=True, max_history=200)
RATING_EPOCHS = (2, 3, 4, 5)


def rating_epochs(train, items, users, config: RankerConfig) -> tuple[int, dict[int, float]]:
    """The epoch count whose cosine schedule, trained on nine tenths of ``train``, gives the
    lowest RMSE on the other tenth (drawn at random); and that RMSE for each count."""
    held = np.random.default_rng(0).random(len(train)) < 0.1
    inner, validation = train[~held], train[held]
    rmse = {}
    for epochs in RATING_EPOCHS:
        mse, _ = rating_mse(inner, validation, items, users, config,
                            RankerOptions(epochs=epochs, schedule="cosine"))  # fmt: skip
        rmse[epochs] = round(float(np.sqrt(mse)), 4)
    return min(rmse, key=rmse.get), rmse


def rating_mse(train, test, items, users, config, options) -> tuple[float, float]:
    """The rating head's test MSE, and its training seconds."""
    start = time.perf_counter()
    rows = rating_examples(train, max_history=config.max_history, context="all")
    ranker, _ = train_ranker(rows, sorted(train["item_id"].astype(str).unique()), items, config,
                             options, users)  # fmt: skip
    targets = rating_examples(train, test, max_history=config.max_history, context="all")
    pred = predict(ranker, targets, users)["rating"]
    seconds = time.perf_counter() - start
    return float(np.mean((pred - test["rating"].to_numpy(np.float64)) ** 2)), seconds


def rating_run(train, test, items, users) -> dict:
    """The rating preset (epochs chosen on validation), the served ranker's default config and
    EmbeddingDotBias, on one split."""
    start = time.perf_counter()
    epochs, curve = rating_epochs(train, items, users, RATING_CONFIG)
    choose_seconds = time.perf_counter() - start
    options = RankerOptions(epochs=epochs, schedule="cosine")
    mse, seconds = rating_mse(train, test, items, users, RATING_CONFIG, options)
    default_mse, default_seconds = rating_mse(train, test, items, users, RankerConfig(),
                                              RankerOptions())  # fmt: skip
    start = time.perf_counter()
    edb = embedding_dot_bias(train, test)
    edb_seconds = time.perf_counter() - start
    y = test["rating"].to_numpy(np.float64)
    return {
        "ranker_mse": mse,
        "ranker_default_mse": default_mse,
        "edb_mse": float(np.mean((edb - y) ** 2)),
        "epochs": epochs,
        "validation_rmse_by_epochs": curve,
        "ranker_seconds": round(seconds, 1),
        "epoch_choice_seconds": round(choose_seconds, 1),
        "ranker_default_seconds": round(default_seconds, 1),
        "edb_seconds": round(edb_seconds, 1),
    }


def ratings(data_dir: str | None) -> dict:
    small = load_movielens("ml-latest-small", data_dir)
    split = make_split(small.interactions, "random-80-20")
    run = rating_run(split.train, split.test, small.items, None)
    out = {"ml-latest-small random-80-20": {
        **{k: round(v, 4) for k, v in run.items() if k.endswith("_mse")},
        **{k: v for k, v in run.items() if not k.endswith("_mse")},
    }}  # fmt: skip
    log.info("%s", out)
    folds = []
    ml100k = load_movielens("ml-100k", data_dir)
    for fold in range(1, 6):
        split = ml100k_fold(Path(data_dir or default_data_dir()) / "ml-100k", fold)
        run = rating_run(split.train, split.test, ml100k.items, ml100k.users)
        folds.append(run)
        log.info("fold %d: %s", fold, run)

    def mean_rmse(key: str) -> float:
        return round(float(np.mean([np.sqrt(f[key]) for f in folds])), 4)

    out["ml-100k folds"] = {
        "ranker_rmse": mean_rmse("ranker_mse"),
        "ranker_default_rmse": mean_rmse("ranker_default_mse"),
        "edb_rmse": mean_rmse("edb_mse"),
        "per_fold": folds,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="MovieLens folder (default: $NEXTWATCH_DATA)")
    parser.add_argument("--only", choices=["two-stage", "ratings"], help="run one part")
    parser.add_argument("--datasets", nargs="+", default=["ml-latest-small", "ml-100k"])
    parser.add_argument("--epochs", type=int, default=RankerOptions().epochs)
    parser.add_argument(
        "--label-horizons", type=int, nargs="+", default=list(LABEL_HORIZONS),
        help="impression label horizons to choose from per dataset on validation (one: use it)",
    )  # fmt: skip
    parser.add_argument(
        "--tower-score-weights", type=float, nargs="+", default=list(TOWER_SCORE_WEIGHTS),
        help="weights of the generator's score in the served score, chosen likewise",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0],
        help="two-stage: one run per seed (the tower's and the ranker's), each a row; the "
        "settings are chosen once per dataset",
    )  # fmt: skip
    parser.add_argument(
        "--members", type=int, default=2,
        help="rankers averaged (RankerConfig.members; 2 is what nextwatch serve trains for "
        "MovieLens)",
    )  # fmt: skip
    parser.add_argument("--negatives", type=int, help="negatives kept per impression")
    parser.add_argument(
        "--holdout", action="store_true", help="impressions from a holdout tower (stacking)"
    )
    parser.add_argument("--output", help="JSON path (default: benchmarks/results/ranking.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    options = RankerOptions(epochs=args.epochs, label_horizon=args.label_horizons[0])
    payload: dict = {
        "ranker_options": options.__dict__,
        "negatives_per_impression": args.negatives,
        "label_horizons": args.label_horizons,
        "tower_score_weights": args.tower_score_weights,
        "holdout": args.holdout,
        "members": args.members,
    }
    with tempfile.TemporaryDirectory(prefix="nextwatch-ranking-") as tmp:
        if args.only in (None, "two-stage"):
            run = partial(two_stage, data_dir=args.data_dir, work=Path(tmp),
                          negatives=args.negatives, holdout=args.holdout,
                          members=args.members)  # fmt: skip
            payload["two_stage"] = []
            for name in args.datasets:
                chosen, weight = None, args.tower_score_weights[0]
                if len(args.label_horizons) > 1 or len(args.tower_score_weights) > 1:
                    # Chosen once per dataset, on validation; every seed runs the choice.
                    chosen = choose_settings(name, args.data_dir, options,
                                             tuple(args.label_horizons),
                                             tuple(args.tower_score_weights),
                                             args.members)  # fmt: skip
                    weight = chosen["tower_score_weight"]
                horizon = chosen["label_horizon"] if chosen else options.label_horizon
                payload["two_stage"] += [
                    run(
                        name,
                        options=replace(options, seed=seed, label_horizon=horizon),
                        tower_score_weight=weight,
                        chosen=chosen,
                    )
                    for seed in args.seeds
                ]
        if args.only in (None, "ratings"):
            payload["ratings"] = ratings(args.data_dir)
    if args.only and (args.output is None or Path(args.output).exists()):
        # A partial run updates its part of the previous results and keeps the rest.
        previous = RESULTS / "ranking.json" if args.output is None else Path(args.output)
        if previous.exists():
            # Each kept part keeps the commit and date it was measured at.
            old = json.loads(previous.read_text())
            kept = [k for k in ("two_stage", "ratings") if k in old and k not in payload]
            payload["earlier_parts"] = {
                k: {"commit": old.get("commit"), "date": old.get("date"),
                    **old.get("earlier_parts", {}).get(k, {})}
                for k in kept
            }  # fmt: skip
            payload |= {k: old[k] for k in kept}
    write_results("ranking", payload, args.output)


if __name__ == "__main__":
    main()
