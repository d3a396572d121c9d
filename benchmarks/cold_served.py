"""What a new user gets from the service, for ``cold_plateau.py`` (its ``served`` parts): a tower's
candidates for each test cold user at ``k = 5``, reordered by a ranker as ``nextwatch serve``
answers, and onboarding as served.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import common  # noqa: F401  (puts the checkout before this folder on the path)
import numpy as np
import pandas as pd
from cold_common import K, onboarding_sets, rank_scores, relevant_sets, train_counts

from ranking.artefact import load_ranker
from ranking.pipeline import candidate_examples, predict, tower_retrieve, train_ranker_job
from ranking.train import validated_settings
from serving.served import ONBOARDING_DIVERSITY_NEW_USER, ONBOARDING_LENGTH_NEW_USER
from towers.artefact import save_artefact
from towers.coldstart import cold_user_split, onboarding_order
from towers.examples import PAD
from towers.metrics import retrieval_metrics
from towers.presets import benchmark_config, benchmark_options, new_user_config
from towers.splits import chronological, make_split
from towers.train import train_tower

log = logging.getLogger("cold_plateau")
SERVED_PARTS = ("served", "served-new-user", "served-routed", "served-onboarding")


class ServedAsk:
    """Ask a tower (``retrieve``, from :func:`ranking.pipeline.tower_retrieve`) for each user's
    candidates and rerank them with ``ranker`` as the service does; returns the top 50 of each
    order as rows of item indices (``index``), -1 padded."""

    def __init__(self, retrieve, ranker, users: pd.DataFrame | None, index: dict) -> None:
        self.retrieve, self.ranker, self.users, self.index = retrieve, ranker, users, index

    def __call__(self, ids, hist, seen, times, store) -> tuple[np.ndarray, np.ndarray]:
        padded = np.array([[PAD] * (50 - len(h)) + list(h) for h in hist], dtype=object)
        got = self.retrieve(padded, list(seen), times, np.asarray(ids, dtype=object))
        examples = candidate_examples(ids, hist, got, store, times, 50)
        logits = predict(self.ranker, examples, self.users)["serving_logit"]
        tower_order = np.full((len(ids), 50), -1, np.int64)
        ranked_order = np.full((len(ids), 50), -1, np.int64)
        for g in range(len(ids)):
            rows = np.flatnonzero(examples.group == g)
            items = np.array([self.index[str(i)] for i in examples.item_id[rows]], np.int64)
            tower_order[g, : min(50, len(items))] = items[:50]
            ranked = items[np.argsort(-logits[rows], kind="stable")][:50]
            ranked_order[g, : len(ranked)] = ranked
        return tower_order, ranked_order


def order_metrics(orders, rel_sets: list[set[int]], popular: dict) -> dict:
    """Recall@10/50 and NDCG@10 of the tower's and the ranker's order, and Recall@50 over
    most-popular's (``popular``, on the same users and relevant items)."""
    out = {}
    for name, order in zip(("candidate_order", "ranked_order"), orders, strict=True):
        got = retrieval_metrics(order, rel_sets, ks=(10, 50))
        out[name] = {k: round(v, 4) for k, v in got.items() if k != "hr@10"}
    for name in ("candidate_order", "ranked_order"):
        out[f"{name}_recall@50_vs_most_popular"] = round(
            out[name]["recall@50"] / popular["recall@50"], 4
        )
    return out


def served_onboarding(ask, model, counts, cold, at: dict, train) -> dict:
    """Onboarding as served: the service's default list (``serving.served``'s length and
    diversity, spread over ``model``'s item space, popularity from the training counts), which
    each cold user goes down rating what they have seen (their later ratings of those items,
    given just before the request at ``at[user]``, their fifth event's time) until they have
    rated five; against the same user's first five, each in the store alone. Both are ranked on
    the same relevant items (the user's other items), with both sets excluded, as in
    ``cold_start.onboarding_comparison``, in the tower's order and the ranker's."""
    items = model.item_ids
    offered = [items[i] for i in onboarding_order(
        model.item_vectors.numpy(), counts, ONBOARDING_LENGTH_NEW_USER,
        diversity=ONBOARDING_DIVERSITY_NEW_USER)]  # fmt: skip
    cold = cold.assign(user_id=cold["user_id"].astype(str), item_id=cold["item_id"].astype(str))
    watched = {u: g["item_id"].tolist() for u, g in cold.groupby("user_id", sort=False)}
    first = {u: w[:K] for u, w in watched.items()}
    picked, union, relevant = onboarding_sets(watched, first, offered, K)
    ids = sorted(u for u in watched if relevant[u])
    times = np.array([at[u] for u in ids], np.int64)
    index = ask.index
    rel_sets = relevant_sets(index, [relevant[u] for u in ids])
    seen = [union[u] for u in ids]
    popular = rank_scores(np.tile(counts, (len(ids), 1)), index, [sorted(s) for s in seen],
                       [relevant[u] for u in ids])  # fmt: skip
    out: dict = {"users": len(ids), "list_length": ONBOARDING_LENGTH_NEW_USER,
                 "diversity": ONBOARDING_DIVERSITY_NEW_USER, "most-popular": popular}  # fmt: skip
    for label, hist in (("first-five", first), ("onboarding", picked)):
        rows = cold.merge(pd.DataFrame([(u, i) for u in ids for i in hist[u]],
                                       columns=["user_id", "item_id"]))  # fmt: skip
        if label == "onboarding":  # rated just now, when the list is shown
            rows = rows.assign(timestamp=rows["user_id"].map(at).astype(np.int64))
        store = pd.concat([train, rows], ignore_index=True)
        orders = ask(ids, [hist[u] for u in ids], seen, times, store)
        out[label] = order_metrics(orders, rel_sets, popular)
    out["mean_rated"] = round(float(np.mean([len(picked[u]) for u in ids])), 2)
    out["users_with_none"] = int(sum(not picked[u] for u in ids))
    return out


def asked_at_k(split) -> tuple[list[str], list, list, pd.DataFrame, pd.DataFrame, np.ndarray]:
    """``split``'s cold users with items after their first ``K``: their IDs (sorted), first
    ``K`` items, the rest (relevant), their log in time order, its first ``K`` rows per user, and
    the time of each one's ``K``-th event (when they are asked)."""
    asked, relevant = split.first_k(K)
    ids = sorted(asked)
    hist, rel = [asked[u] for u in ids], [relevant[u] for u in ids]
    cold = chronological(split.cold)
    cold = cold[cold["user_id"].astype(str).isin(set(ids))]
    first = cold.groupby("user_id").head(K)
    when = first.groupby(first["user_id"].astype(str))["timestamp"].max().reindex(ids)
    return ids, hist, rel, cold, first, when.to_numpy(np.int64)


def served(data, work: Path, part: str = "served", candidates: int = 100) -> dict:
    """A tower's ``candidates`` for each test cold user at ``k = 5``, in the tower's order and
    reordered by a ranker (its ``serving_logit``), as ``nextwatch serve`` answers; the store
    holds the user's five ratings, so the ranker's user features (count, mean rating, time since
    the last) are those of five ratings.

    ``part`` ``served``: the benchmark preset and the ranker the service trains for it (what the
    service returned before it had a new-user tower); ``served-new-user``: the new-user preset
    and a ranker trained for it; ``served-routed``: the new-user preset's candidates rescored
    by the benchmark preset's ranker, which is what ``nextwatch serve`` returns now that its
    artefact holds both towers (``serving.api.Recommender`` sends a user with at most
    ``towers.presets.NEW_USER_MAX_RATINGS`` rated items to the new-user tower)."""
    split = cold_user_split(data.interactions)
    warm = make_split(split.train, "temporal-user-20")
    train = data.with_interactions(warm.train)
    options = benchmark_options(verbose=0, dataset=data.name)
    towers = {"served": "benchmark", "served-new-user": "new_user", "served-routed": "new_user",
              "served-onboarding": "new_user"}  # fmt: skip
    rankers = {"served": "benchmark", "served-new-user": "new_user", "served-routed": "benchmark",
               "served-onboarding": "benchmark"}  # fmt: skip
    presets = {"benchmark": benchmark_config(data.name), "new_user": new_user_config(data.name)}
    dirs, results = {}, {}
    for name in dict.fromkeys([towers[part], rankers[part]]):  # the candidates' tower first
        results[name] = train_tower(train, presets[name], options)
        dirs[name] = save_artefact(results[name], work / name, data=train)
    result, tower_dir = results[towers[part]], dirs[towers[part]]
    config, ranker_options = validated_settings(data.name)
    start = time.perf_counter()
    train_ranker_job(
        dirs[rankers[part]], train, work / "ranker", config=config, options=ranker_options
    )
    ranker_seconds = time.perf_counter() - start
    ranker = load_ranker(work / "ranker")

    ids, hist, rel, cold, first, times = asked_at_k(split)
    _, retrieve = tower_retrieve(tower_dir, data.users, candidates)
    index = {i: n for n, i in enumerate(result.model.item_ids)}
    counts = train_counts(warm.train, list(index))
    ask = ServedAsk(retrieve, ranker, data.users, index)
    store = pd.concat([warm.train, first], ignore_index=True)
    orders = ask(ids, hist, [set(h) for h in hist], times, store)
    popular = rank_scores(np.tile(counts, (len(ids), 1)), index, hist, rel)
    out = {"users": len(ids), "candidates": candidates,
           "tower_preset": f"{towers[part]}_config",
           "ranker_trained_for": f"{rankers[part]}_config",
           "ranker": {"tower_score_weight": config.tower_score_weight, "members": config.members,
                      "label_horizon": ranker_options.label_horizon,
                      "train_seconds": round(ranker_seconds, 1)},
           "most-popular": popular,
           **order_metrics(orders, relevant_sets(index, rel), popular)}  # fmt: skip
    if part == "served-onboarding":
        at = dict(zip(ids, times.tolist(), strict=True))
        out["onboarding"] = served_onboarding(ask, result.model, counts, cold, at, warm.train)
    log.info("%s served: %s", data.name, out)
    return out
