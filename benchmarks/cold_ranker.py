"""A ranker trained on new users' impressions, for ``cold_plateau.py --parts served-cold-ranker``.

Until 2026-12-01 the service reranked the new-user tower's candidates with the ranker trained
for the benchmark preset, on established users' impressions (``cold_served.served``, part
``served-routed``). This part asks whether a ranker trained for the question a new user asks
does better: :func:`ranking.pipeline.train_new_user_ranker_job`, whose impressions are the
new-user tower's top 100 at up to 5 events among each warm user's first
``towers.presets.NEW_USER_MAX_RATINGS`` (a history of 1 to 15 items), with every shown item the
user watched later a positive (protocol cold-user-k's relevance), from copies of the tower
trained without the user (cross-fitting), and the dataset's validated ranker configuration.

On a carve it trains both towers and both rankers, and scores the cold users' top 50 at
``k = 5`` for each ranker at each tower-score weight of ``WEIGHTS`` (the served score is
``logit + weight * tower_score``). The ranker and weight are picked on validation users (the
carve of ``cold_start.py --only age-knots``) by Recall@50, then reported on the test users, next
to both rankers at the served weight; on the test users, onboarding is scored through both
rankers at the served weight as well (``cold_served.served_onboarding``). The picks set
``ranking.train.VALIDATED_NEW_USER_RANKER``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import common  # noqa: F401  (puts the checkout before this folder on the path)
import numpy as np
import pandas as pd
from cold_common import rank_scores, relevant_sets, train_counts
from cold_served import ServedAsk, asked_at_k, served_onboarding

from ranking.artefact import load_ranker
from ranking.pipeline import (
    NEW_USER_IMPRESSIONS,
    candidate_examples,
    predict,
    tower_retrieve,
    train_new_user_ranker_job,
    train_ranker_job,
)
from ranking.train import validated_settings
from towers.artefact import save_artefact
from towers.coldstart import cold_user_split
from towers.examples import PAD
from towers.metrics import retrieval_metrics
from towers.presets import (
    NEW_USER_MAX_RATINGS,
    benchmark_config,
    benchmark_options,
    new_user_config,
)
from towers.splits import make_split
from towers.train import train_tower

log = logging.getLogger("cold_plateau")
WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
CANDIDATES = 100


def _weighted(ranker, examples, users, groups, items, rel_sets, popular) -> dict:
    """Recall@10/50 and NDCG@10 of the top 50 by ``logit + w * tower_score`` for each ``w``."""
    logit = predict(ranker, examples, users)["logit"]
    out = {}
    for w in WEIGHTS:
        score = logit + w * examples.numeric["tower_score"]
        order = np.full((len(groups), 50), -1, np.int64)
        for g, rows in enumerate(groups):
            top = items[g][np.argsort(-score[rows], kind="stable")][:50]
            order[g, : len(top)] = top
        got = retrieval_metrics(order, rel_sets, ks=(10, 50))
        cell = {k: round(v, 4) for k, v in got.items() if k != "hr@10"}
        cell["recall@50_vs_most_popular"] = round(got["recall@50"] / popular["recall@50"], 4)
        out[str(w)] = cell
    return out


def new_user_ranker(data, train, tower_dir: Path, work: Path):
    """The ranker ``nextwatch serve`` trains for the new-user tower at ``tower_dir``
    (:func:`ranking.pipeline.train_new_user_ranker_job`), with its row counts and seconds."""
    config, options = validated_settings(data.name)
    start = time.perf_counter()
    metrics = train_new_user_ranker_job(tower_dir, train, work / "new-user-ranker", config, options)
    info = {"impression_rows": metrics["impression_rows"],
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    return load_ranker(work / "new-user-ranker"), info


def carve(data, split, work: Path, onboarding: bool = False) -> dict:
    """Both rankers at every weight on ``split``'s cold users at ``k = 5``; with ``onboarding``,
    also onboarding as served through each ranker at its configured (served) weight."""
    warm = make_split(split.train, "temporal-user-20")
    train = data.with_interactions(warm.train)
    options = benchmark_options(verbose=0, dataset=data.name)
    new_user = train_tower(train, new_user_config(data.name), options)
    tower_dir = save_artefact(new_user, work / "new_user", data=train)
    bench_dir = save_artefact(
        train_tower(train, benchmark_config(data.name), options), work / "benchmark", data=train
    )
    config, ranker_options = validated_settings(data.name)
    start = time.perf_counter()
    train_ranker_job(bench_dir, train, work / "ranker", config=config, options=ranker_options)
    rankers = {"served": load_ranker(work / "ranker")}
    info = {"served": {"seconds": round(time.perf_counter() - start, 1)}}
    item_ids = list(new_user.model.item_ids)
    rankers["new-user"], info["new-user"] = new_user_ranker(data, train, tower_dir, work)

    ids, hist, rel, cold, first, times = asked_at_k(split)
    _, retrieve = tower_retrieve(tower_dir, data.users, CANDIDATES)
    index = {i: n for n, i in enumerate(item_ids)}
    counts = train_counts(warm.train, item_ids)
    popular = rank_scores(np.tile(counts, (len(ids), 1)), index, hist, rel)
    rel_sets = relevant_sets(index, rel)
    store = pd.concat([warm.train, first], ignore_index=True)
    padded = np.array([[PAD] * (50 - len(h)) + list(h) for h in hist], dtype=object)
    got = retrieve(padded, [set(h) for h in hist], times, np.asarray(ids, dtype=object))
    examples = candidate_examples(ids, hist, got, store, times, 50)
    groups = [np.flatnonzero(examples.group == g) for g in range(len(ids))]
    items = [np.array([index[str(i)] for i in examples.item_id[r]], np.int64) for r in groups]
    tower_order = np.full((len(ids), CANDIDATES), -1, np.int64)
    for g, row in enumerate(items):
        tower_order[g, : len(row)] = row[:CANDIDATES]
    tower = retrieval_metrics(tower_order, rel_sets, ks=(10, 50, 100))
    out: dict = {
        "users": len(ids),
        "most-popular": popular,
        "candidate_order": {k: round(v, 4) for k, v in tower.items() if k != "hr@10"},
        "rankers": info,
    }
    out["candidate_order"]["recall@50_vs_most_popular"] = round(
        tower["recall@50"] / popular["recall@50"], 4
    )
    for name, ranker in rankers.items():
        out[name] = _weighted(ranker, examples, data.users, groups, items, rel_sets, popular)
        log.info("%s %s ranker: %s", data.name, name, out[name])
    if onboarding:
        at = dict(zip(ids, times.tolist(), strict=True))
        out["onboarding"] = {
            name: served_onboarding(ServedAsk(retrieve, ranker, data.users, index),
                                     new_user.model, counts, cold, at, warm.train)
            for name, ranker in rankers.items()
        }  # fmt: skip
    return out


def cold_ranker(data, work: Path) -> dict:
    """:func:`carve` on validation users, the pick (ranker and weight, by Recall@50 over
    most-popular), and :func:`carve` on the test users, where nothing is picked."""
    outer = cold_user_split(data.interactions)
    val = carve(data, cold_user_split(outer.train, seed=8), work / "validation")
    test = carve(data, outer, work / "test", onboarding=True)
    key = "recall@50_vs_most_popular"
    ranker, weight = max(
        ((r, w) for r in ("served", "new-user") for w in val[r]), key=lambda p: val[p[0]][p[1]][key]
    )
    served_weight = str(validated_settings(data.name)[0].tower_score_weight)
    summary = {
        label: {"validation": val[r][w], "test": test[r][w]}
        for label, (r, w) in {
            f"served ranker at its served weight {served_weight}": ("served", served_weight),
            f"new-user ranker at the served weight {served_weight}": ("new-user", served_weight),
            f"validation's pick: {ranker} ranker at weight {weight}": (ranker, weight),
        }.items()
    }
    summary["candidate order"] = {"validation": val["candidate_order"],
                                  "test": test["candidate_order"]}  # fmt: skip
    log.info("%s cold ranker summary: %s", data.name, summary)
    return {"weights": list(WEIGHTS), "impressions": NEW_USER_IMPRESSIONS,
            "max_position": NEW_USER_MAX_RATINGS, "pick": {"ranker": ranker, "weight": weight},
            "summary": summary, "validation": val, "test": test}  # fmt: skip
