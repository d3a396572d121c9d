"""cold-user-k and onboarding, for ``cold_start.py`` (its ``users`` and ``onboarding-new-user``
parts): held-out users given their first k items at request time, and users who rate what they
have seen of the onboarding list, against their own first five.
"""

from __future__ import annotations

import logging

import baselines as bl
import numpy as np
from cold_common import (
    cold_scorer,
    onboarding_sets,
    rank_scores,
    train_counts,
)

from towers.coldstart import cold_user_split, onboarding_order
from towers.evaluate import evaluate_retrieval
from towers.features import UserFeatures
from towers.pipeline import evaluate_tower
from towers.presets import benchmark_config, benchmark_options, new_user_config
from towers.splits import make_split
from towers.train import train_tower

log = logging.getLogger("benchmarks.cold_start")
KS = (0, 1, 3, 5, 10)
# How many of the list's items a user is shown (a page that offers more while they have rated
# fewer than five shows up to the whole pool of 300).
SHOWN = (20, 50, 100, 300)


def cold_users(data, presets: dict | None = None, onboarding: bool = True) -> dict:
    """cold-user-k for the benchmark preset and the new-user preset (both trained on the warm
    users' temporal-user-20 train part), next to most-popular and EASE; warm users; onboarding."""
    split = cold_user_split(data.interactions)
    warm = make_split(split.train, "temporal-user-20")
    train = data.with_interactions(warm.train)
    users = UserFeatures.from_frame(data.users)
    times = split.cold.groupby("user_id")["timestamp"].apply(list).to_dict()
    presets = presets or {
        "nextwatch": benchmark_config(data.name),
        "nextwatch-new-user": new_user_config(data.name),
    }
    models, scorers, trained = {}, {}, {}
    for name, config in presets.items():
        result = train_tower(train, config, benchmark_options(verbose=0, dataset=data.name))
        models[name] = result.model
        scorers[name] = cold_scorer(result.model, times, users)
        trained[name] = {"train_seconds": result.metrics["train_seconds"],
                         "examples": result.metrics["examples"]}  # fmt: skip
    items = next(iter(models.values())).item_ids  # every preset orders items the same way
    index = {i: n for n, i in enumerate(items)}
    counts = train_counts(warm.train, items)
    # EASE, the strongest baseline of the retrieval benchmark, with its L2 strength tuned on
    # validation users carved from the warm users' training data (as there).
    ease_params, _ = bl.tune(warm, bl.ease, bl.EASE_GRID)
    x, _ = bl.interaction_matrix(warm.train, items)
    ease_b = bl.ease_weights(x, **ease_params)

    table = []
    for k in KS:
        histories, relevant = split.first_k(k)
        ids = sorted(histories)
        hist = [histories[u] for u in ids]
        rel = [relevant[u] for u in ids]
        bags = np.zeros((len(ids), len(items)))
        for r, h in enumerate(hist):
            bags[r, [index[i] for i in h if i in index]] = 1.0
        unknown = sum(len({str(i) for i in r} - index.keys()) for r in rel)
        row = {"k": k, "users": len(ids), "relevant_not_in_train": unknown,
               "relevant": sum(len({str(i) for i in r}) for r in rel)}  # fmt: skip
        for name, scorer in scorers.items():
            row[name] = rank_scores(scorer(histories, k)[1], index, hist, rel)
        row["most-popular"] = rank_scores(np.tile(counts, (len(ids), 1)), index, hist, rel)
        # With no history EASE scores every item 0: it has no answer for k = 0.
        row["ease"] = rank_scores(bags @ ease_b, index, hist, rel) if k else None
        for name in scorers:
            row[f"{name}_recall@50_vs_most_popular"] = round(
                row[name]["recall@50"] / max(row["most-popular"]["recall@50"], 1e-12), 3
            )
        log.info("%s cold-user-%d: %s", data.name, k, row)
        table.append(row)
    keep = ("recall@10", "recall@50", "ndcg@10", "users")
    popular = evaluate_retrieval(lambda u: np.tile(counts, (len(u), 1)), items, warm, ks=(10, 50))
    warm_rows = {"most-popular": {k: round(popular[k], 4) for k in keep}}
    for name, model in models.items():
        metrics = evaluate_tower(model, train, warm)
        warm_rows[name] = {k: round(metrics[k], 4) for k in keep}
    return {
        "presets": {name: config.to_dict() for name, config in presets.items()},
        "ease_params": ease_params,
        "cold_users": int(split.cold["user_id"].nunique()),
        "warm_users": int(warm.train["user_id"].nunique()),
        "training": trained,
        "by_k": table,
        "warm": warm_rows,
        "onboarding": {
            name: onboarding_comparison(split, models[name], index, counts, scorers[name])
            for name in models
            if onboarding
        },
        "onboarding_validation": onboarding_validation(data, split) if onboarding else None,
    }


def onboarding_validation(data, split, config=None) -> dict:
    """The onboarding grid (list length x diversity) on validation users, to pick a setting
    without the test users: a second cold-user split (``seed`` 8) inside the warm users, the
    benchmark preset (or ``config``) trained on the rest (their temporal-user-20 train part, as
    for the test users). The pick is the setting whose onboarding beats first-five by the largest
    mean relative margin over Recall@10, Recall@50 and NDCG@10."""
    inner = cold_user_split(split.train, seed=8)
    warm = make_split(inner.train, "temporal-user-20")
    train = data.with_interactions(warm.train)
    options = benchmark_options(verbose=0, dataset=data.name)
    model = train_tower(train, config or benchmark_config(data.name), options).model
    times = inner.cold.groupby("user_id")["timestamp"].apply(list).to_dict()
    scorer = cold_scorer(model, times, UserFeatures.from_frame(data.users))
    index = {i: n for n, i in enumerate(model.item_ids)}
    counts = train_counts(warm.train, model.item_ids)
    grid = onboarding_comparison(inner, model, index, counts, scorer)

    def margin(cell: dict) -> float:
        pairs = [(cell["onboarding"][m], cell["first-five"][m])
                 for m in ("recall@10", "recall@50", "ndcg@10")]  # fmt: skip
        return float(np.mean([(a - b) / max(b, 1e-12) for a, b in pairs]))

    chosen = max(grid, key=lambda name: margin(grid[name]))
    return {"validation_users": int(inner.cold["user_id"].nunique()), "grid": grid,
            "margins": {name: round(margin(cell), 4) for name, cell in grid.items()},
            "chosen": chosen}  # fmt: skip


def joint_pick(validations: dict) -> dict:
    """The one onboarding setting for every dataset, as the service has one default: the largest
    mean over ``validations`` (dataset -> :func:`onboarding_validation`'s result) of the
    validation margins."""
    names = [n for n in next(iter(validations.values()))["margins"]
             if all(n in v["margins"] for v in validations.values())]  # fmt: skip
    means = {n: round(float(np.mean([v["margins"][n] for v in validations.values()])), 4)
             for n in names}  # fmt: skip
    return {"datasets": sorted(validations), "mean_margins": means,
            "chosen": max(names, key=means.__getitem__)}  # fmt: skip


def onboarding_new_user(data) -> dict:
    """Onboarding for the new-user preset, the tower that answers a user while they rate their
    first items in the service (whose onboarding list then comes from that tower's item
    vectors): the setting picked on validation users (:func:`onboarding_validation` with that
    preset), then the whole grid on the test users, where nothing is picked."""
    split = cold_user_split(data.interactions)
    config = new_user_config(data.name)
    validation = onboarding_validation(data, split, config)
    warm = make_split(split.train, "temporal-user-20")
    train = data.with_interactions(warm.train)
    model = train_tower(train, config, benchmark_options(verbose=0, dataset=data.name)).model
    times = split.cold.groupby("user_id")["timestamp"].apply(list).to_dict()
    scorer = cold_scorer(model, times, UserFeatures.from_frame(data.users))
    index = {i: n for n, i in enumerate(model.item_ids)}
    counts = train_counts(warm.train, model.item_ids)
    grid = onboarding_comparison(split, model, index, counts, scorer)
    chosen = validation["chosen"]
    out = {"validation": validation, "test": grid, "chosen": chosen, "test_of_chosen": grid[chosen]}
    log.info("%s onboarding for the new-user preset: %s on test", data.name, out["test_of_chosen"])
    return out


def onboarding_comparison(split, model, index, counts, scores_for, rate: int = 5) -> dict:
    """Cold users rate what they have seen of the onboarding list (up to ``rate`` items, in list
    order) vs their own first ``rate`` items; both ranked on the same relevant items, with both
    sets excluded, next to most-popular on those items."""
    items = model.item_ids
    vectors = model.item_vectors.numpy()
    watched = {u: g.astype(str).tolist() for u, g in split.cold.groupby("user_id")["item_id"]}
    first = {u: w[:rate] for u, w in watched.items()}
    out = {}
    for shown in SHOWN:
        lists = {
            f"onboarding-diversity-{d}": [
                items[i] for i in onboarding_order(vectors, counts, shown, diversity=d)
            ]
            for d in (0.0, 0.3, 0.5, 0.7, 0.9)
        }
        for name, offered in lists.items():
            picked, union, relevant = onboarding_sets(watched, first, offered, rate)
            users = sorted(u for u in watched if relevant[u])  # scores_for's order too
            seen = [sorted(union[u]) for u in users]
            rel = [relevant[u] for u in users]
            result = {}
            for label, hist in (("first-five", first), ("onboarding", picked)):
                _, scores = scores_for({u: hist[u] for u in users}, rate)
                result[label] = rank_scores(scores, index, seen, rel)
            result["most-popular"] = rank_scores(np.tile(counts, (len(users), 1)), index, seen, rel)
            for label in ("first-five", "onboarding"):
                result[f"{label}_recall@50_vs_most_popular"] = round(
                    result[label]["recall@50"] / max(result["most-popular"]["recall@50"], 1e-12), 3
                )
            result["mean_rated"] = round(float(np.mean([len(picked[u]) for u in users])), 2)
            # How far down the list each user went: to their last rating, or to its end.
            reach = [
                offered.index(picked[u][-1]) + 1 if len(picked[u]) == rate else len(offered)
                for u in users
            ]
            result["mean_items_seen"] = round(float(np.mean(reach)), 1)
            result["median_items_seen"] = float(np.median(reach))
            result["users_with_none"] = int(sum(not picked[u] for u in users))
            out[f"shown-{shown}/{name}"] = result
            log.info("onboarding shown %d %s: %s", shown, name, result)
    return out
