"""Does a learned stack of every signal get ml-100k's cold-user-5 past 1.5x most-popular?

``cold_plateau.py`` puts each family of recommender on the same users; none passes 1.40x on
ml-100k, and blending two families did not add up. This benchmark asks the last question of that
kind: whether gradient-boosted trees (LightGBM), given everything a new user's request carries
and everything the warm users' log says, find what the families miss. For each of a cold user's
``CANDIDATES`` best items by the new-user tower (``towers.presets.new_user_config``), the trees
read:

* the tower's score, its z-score within the user's candidates, and its rank;
* the item's popularity among the warm users: over all their ratings, in their first five (the
  sign-up page's films), after their first five, and later on their first day (68 % of
  ml-100k's users rated everything on their first day);
* co-occurrence with the user's five items: how often the item follows each of them (rated
  after one of a warm user's first five; rated strictly later in time), summed and at most, the
  mean lift over its popularity after the first five, and a sum weighted by the user's stars;
* the item's popularity within the user's gender, age band and occupation, as a lift over its
  overall popularity after the first five (ml-100k; absent elsewhere);
* the item's mean rating, and of the user: the mean log popularity and mean stars of their five,
  and the seconds from their first rating to their fifth.

Everything a training example reads is cross-fitted: the warm users are cut into ``FOLDS``
folds, and a fold's users are asked (their first five, with all their later items as the
labels) by counts and a tower from the other folds only. A cold user is asked by counts and a
tower from every warm user, which is also what most-popular counts (as ``cold_plateau.py``'s
"tower on every warm interaction"). The objective (LambdaRank, or binary log-loss with each user
weighted by one over their positives, as Recall@50 weights them) and the number of trees are
picked on validation users (a second cold-user split inside the warm users, ``seed=8``), and
the pick is reported on the test users at seeds 0-2 (tower, folds and trees).

    python benchmarks/cold_stack.py --data-dir ../shared/data   # ml-100k, 16 min
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass

import common
import lightgbm as lgb
import numpy as np
import pandas as pd
from cold_common import K, cold_scorer, rank_scores, train_counts

from towers.coldstart import ColdUserSplit, cold_user_split
from towers.features import UserFeatures
from towers.movielens import load_movielens
from towers.presets import benchmark_options, new_user_config
from towers.splits import chronological
from towers.train import peak_rss_mb, train_tower

log = logging.getLogger("cold_stack")
CANDIDATES = 300
FOLDS = 3
DAY_S = 86_400
AGE_BANDS = [0, 18, 25, 35, 45, 56, 200]
DEMOGRAPHICS = ("gender", "age_band", "occupation")
EPS = 1e-4
OBJECTIVES = {
    "lambdarank": {"objective": "lambdarank", "lambdarank_truncation_level": 60},
    "binary, users weighted": {"objective": "binary"},
}
TREES = (50, 100, 200, 400)
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class History:
    """One user's ratings, oldest first (protocol order)."""

    items: list[str]
    stars: np.ndarray
    times: np.ndarray


def histories(frame: pd.DataFrame) -> dict[str, History]:
    ordered = chronological(frame)
    return {
        str(user): History(g["item_id"].astype(str).tolist(), g["rating"].to_numpy(np.float32),
                           g["timestamp"].to_numpy(np.int64))
        for user, g in ordered.groupby("user_id", sort=True)
    }  # fmt: skip


def demographic_keys(users: pd.DataFrame | None, ids) -> dict[str, np.ndarray] | None:
    """Each user's gender, age band and occupation (None without user metadata)."""
    if users is None or users.empty or not {"age", "gender", "occupation"} <= set(users.columns):
        return None
    meta = users.assign(user_id=users["user_id"].astype(str)).set_index("user_id").reindex(ids)
    return {
        "gender": meta["gender"].astype(str).to_numpy(),
        "age_band": pd.cut(meta["age"], AGE_BANDS).astype(str).to_numpy(),
        "occupation": meta["occupation"].astype(str).to_numpy(),
    }


class Counts:
    """What the reference users' log says about each item, alone and after others."""

    def __init__(self, ref: dict[str, History], items: list[str], users: pd.DataFrame | None):
        self.index = {i: n for n, i in enumerate(items)}
        n, m = len(ref), len(items)
        every, first, later, day = (np.zeros((n, m), np.float32) for _ in range(4))
        after = np.zeros((m, m), np.float32)
        stars = np.zeros(m, np.float64)
        for row, h in enumerate(ref.values()):
            cols = np.array([self.index.get(i, -1) for i in h.items])
            kept = cols >= 0
            cols, times = cols[kept], h.times[kept]
            np.add.at(stars, cols, h.stars[kept])
            every[row, cols] = 1.0
            first[row, cols[:K]] = 1.0
            later[row, cols[K:]] = 1.0
            on_day = times - times.min() < DAY_S
            on_day[:K] = False
            day[row, cols[on_day]] = 1.0
            after[np.ix_(cols, cols)] += times[:, None] < times[None, :]
        rated = every.sum(0) + 1.0
        self.popularity = every.mean(0)
        self.popularity_first = first.mean(0)
        self.popularity_later = later.mean(0)
        self.popularity_day = day.mean(0)
        self.follows_first = (first.T @ later) / (first.sum(0) + 1.0)[:, None]
        self.follows = after / rated[:, None]
        self.mean_stars = (stars + 3.5 * 5) / (every.sum(0) + 5)  # shrunk toward 3.5
        self.demographic_lift: dict[str, dict[str, np.ndarray]] = {}
        keys = demographic_keys(users, list(ref))
        for column, values in (keys or {}).items():
            table = {}
            for value in np.unique(values):
                rows = values == value
                shrunk = (later[rows].sum(0) + 20.0 * self.popularity_later) / (rows.sum() + 20.0)
                table[value] = np.log((shrunk + EPS) / (self.popularity_later + EPS))
            self.demographic_lift[column] = table


@dataclass
class Examples:
    """Candidate rows of many users: features, labels, and where each user's rows are."""

    features: np.ndarray
    labels: np.ndarray
    sizes: list[int]
    users: list[str]
    candidates: list[np.ndarray]


def examples(counts: Counts, asked: dict[str, History], towers: dict[str, np.ndarray],
             users: pd.DataFrame | None) -> Examples:  # fmt: skip
    """Each asked user's first ``K`` items against their ``CANDIDATES`` best by the tower;
    a candidate is positive if the user rated it later."""
    keys = demographic_keys(users, list(asked)) if counts.demographic_lift else None
    rows, labels, sizes, ids, cands = [], [], [], [], []
    for r, (user, h) in enumerate(asked.items()):
        pairs = [
            (counts.index[i], s)
            for i, s in zip(h.items[:K], h.stars[:K], strict=True)
            if i in counts.index
        ]
        seen = np.array([c for c, _ in pairs], np.int64)
        stars = np.array([s for _, s in pairs], np.float32)
        later = {counts.index[i] for i in h.items[K:] if i in counts.index}
        tower = towers[user]
        masked = tower.copy()
        masked[seen] = -np.inf
        cand = np.argsort(-masked, kind="stable")[:CANDIDATES]
        size = len(cand)
        if not len(seen):  # none of the five is known: nothing follows them, stars count 0
            stars = np.zeros(1, np.float32)
        first = counts.follows_first[seen][:, cand] if len(seen) else np.zeros((1, size))
        follows = counts.follows[seen][:, cand] if len(seen) else np.zeros((1, size))
        lift = np.log((first + EPS) / (counts.popularity_later[cand] + EPS))
        score = tower[cand]
        user_columns = [
            np.log(counts.popularity[seen] + EPS).mean() if len(seen) else np.log(EPS),
            stars.mean(),
            np.log1p(float(h.times[K - 1] - h.times[0])),
        ]  # fmt: skip
        columns = [
            score, (score - score.mean()) / (score.std() + 1e-6), np.log1p(np.arange(size)),
            np.log(counts.popularity[cand] + EPS), np.log(counts.popularity_first[cand] + EPS),
            np.log(counts.popularity_later[cand] + EPS), np.log(counts.popularity_day[cand] + EPS),
            first.sum(0), first.max(0), follows.sum(0), follows.max(0), lift.mean(0),
            ((stars - 3.0)[:, None] * first).sum(0) if len(seen) else np.zeros(size),
            counts.mean_stars[cand],
            *(np.full(size, value) for value in user_columns),
        ]  # fmt: skip
        if keys is not None:
            none = np.zeros_like(counts.popularity)  # a value no reference user has
            columns += [
                counts.demographic_lift[c].get(keys[c][r], none)[cand] for c in DEMOGRAPHICS
            ]
        rows.append(np.stack(columns, axis=1))
        labels.append(np.isin(cand, list(later)).astype(np.float32))
        sizes.append(size)
        ids.append(user)
        cands.append(cand)
    return Examples(np.concatenate(rows), np.concatenate(labels), sizes, ids, cands)


def tower_scores(data, frame: pd.DataFrame, asked: dict[str, History], items: list[str],
                 seed: int) -> dict[str, np.ndarray]:  # fmt: skip
    """The new-user tower trained on ``frame``: each asked user's scores over ``items`` after
    their first ``K`` items (an item the tower never saw scores below all others)."""
    options = benchmark_options(verbose=0, seed=seed, dataset=data.name)
    model = train_tower(data.with_interactions(frame), new_user_config(data.name), options).model
    scorer = cold_scorer(model, {u: list(h.times) for u, h in asked.items()},
                         UserFeatures.from_frame(data.users))  # fmt: skip
    ids, scores = scorer({u: h.items[:K] for u, h in asked.items()}, K)
    column = {i: n for n, i in enumerate(model.item_ids)}
    take = np.array([column.get(i, -1) for i in items])
    return {
        u: np.where(take >= 0, row[np.maximum(take, 0)], row.min() - 1.0)
        for u, row in zip(ids, scores, strict=True)
    }


def crossfit(data, warm: dict[str, History], frame: pd.DataFrame, items: list[str],
             seed: int) -> Examples:  # fmt: skip
    """Training examples of the warm users, each fold asked by the other folds' log."""
    ids = np.array(sorted(u for u, h in warm.items() if len(h.items) > K))
    fold = np.random.default_rng(seed).integers(FOLDS, size=len(ids))
    parts = []
    for f in range(FOLDS):
        asked = {u: warm[u] for u in ids[fold == f]}
        reference = {u: h for u, h in warm.items() if u not in asked}
        ref_frame = frame[~frame["user_id"].astype(str).isin(set(asked))]
        towers = tower_scores(data, ref_frame, asked, items, seed)
        parts.append(examples(Counts(reference, items, data.users), asked, towers, data.users))
    return Examples(
        np.concatenate([p.features for p in parts]), np.concatenate([p.labels for p in parts]),
        [s for p in parts for s in p.sizes], [u for p in parts for u in p.users],
        [c for p in parts for c in p.candidates],
    )  # fmt: skip


def _user_weights(train: Examples) -> np.ndarray:
    """One over each user's positives among their candidates, on each of their rows."""
    starts = np.cumsum([0, *train.sizes[:-1]])
    positives = np.add.reduceat(train.labels, starts)
    return np.repeat(1.0 / np.maximum(positives, 1.0), train.sizes)


def carve(data, split: ColdUserSplit, seed: int, objectives=OBJECTIVES) -> dict:
    """Recall@50 over most-popular on ``split``'s cold users at ``k = K``: the tower alone, and
    the stack for each objective after each number of trees."""
    start = time.perf_counter()
    items = sorted(split.train["item_id"].astype(str).unique())
    index = {i: n for n, i in enumerate(items)}
    warm = histories(split.train)
    train = crossfit(data, warm, split.train, items, seed)
    cold = {u: h for u, h in histories(split.cold).items() if len(h.items) > K}
    towers = tower_scores(data, split.train, cold, items, seed)
    test = examples(Counts(warm, items, data.users), cold, towers, data.users)
    history = [h.items[:K] for h in cold.values()]
    relevant = [h.items[K:] for h in cold.values()]
    popular = rank_scores(np.tile(train_counts(split.train, items), (len(cold), 1)), index,
                          history, relevant)  # fmt: skip

    def ratio(scores: np.ndarray) -> float:
        return round(rank_scores(scores, index, history, relevant)["recall@50"]
                     / popular["recall@50"], 4)  # fmt: skip

    tower = ratio(np.stack([towers[u] for u in test.users]))
    out: dict = {"users": len(cold), "most-popular": popular, "training_rows": len(train.labels),
                 "tower": tower, "stack": {}}  # fmt: skip
    for name, params in objectives.items():
        ranking = params["objective"] == "lambdarank"
        dataset = lgb.Dataset(
            train.features, train.labels, group=train.sizes if ranking else None,
            weight=None if ranking else _user_weights(train),
        )  # fmt: skip
        settings = {**params, "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 50,
                    "seed": seed, "num_threads": 2, "verbose": -1}  # fmt: skip
        booster = lgb.train(settings, dataset, num_boost_round=max(TREES))
        for trees in TREES:
            predicted = booster.predict(test.features, num_iteration=trees)
            scores = np.full((len(test.users), len(items)), -np.inf)
            ends = np.cumsum(test.sizes)
            for row, (cand, end, size) in enumerate(
                zip(test.candidates, ends, test.sizes, strict=True)
            ):
                scores[row, cand] = predicted[end - size : end]
            out["stack"][f"{name}, {trees} trees"] = ratio(scores)
    out["seconds"] = round(time.perf_counter() - start, 1)
    log.info("%s seed %d: %s", data.name, seed, out)
    return out


def stack(data, seeds=SEEDS) -> dict:
    """The pick on validation users (seed 0), then the test users at ``seeds``."""
    outer = cold_user_split(data.interactions)
    validation = carve(data, cold_user_split(outer.train, seed=8), seed=0)
    pick = max(validation["stack"], key=validation["stack"].get)
    name = pick.rsplit(",", 1)[0]
    tests = [carve(data, outer, seed, {name: OBJECTIVES[name]}) for seed in seeds]
    summary = {
        "pick": pick,
        "validation": {"stack": validation["stack"][pick], "tower": validation["tower"]},
        "test_stack": [t["stack"][pick] for t in tests],
        "test_tower": [t["tower"] for t in tests],
    }
    summary["test_stack_mean"] = round(float(np.mean(summary["test_stack"])), 4)
    summary["test_tower_mean"] = round(float(np.mean(summary["test_tower"])), 4)
    log.info("%s summary: %s", data.name, summary)
    return {"summary": summary, "validation": validation, "test": tests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="MovieLens folder ($NEXTWATCH_DATA)")
    parser.add_argument("--datasets", nargs="+", default=["ml-100k"])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    payload: dict = {"k": K, "candidates": CANDIDATES, "folds": FOLDS, "trees": list(TREES),
                     "lightgbm": lgb.__version__, "datasets": {}}  # fmt: skip
    for name in args.datasets:
        payload["datasets"][name] = stack(load_movielens(name, args.data_dir), args.seeds)
        common.write_results("cold_stack", payload, args.output)  # partial results survive
    payload["wall_seconds"] = round(time.perf_counter() - start, 1)
    payload["peak_rss_mb"] = peak_rss_mb()
    log.info("wrote %s", common.write_results("cold_stack", payload, args.output))


if __name__ == "__main__":
    main()
