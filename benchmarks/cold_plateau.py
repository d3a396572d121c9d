"""How far a new user's first five ratings go: every family of recommender, on the same users.

Issue 6's target is cold-user-5 Recall@50 at least 1.5x most-popular. The new-user tower meets it
on ml-latest-small and misses it on ml-100k (``benchmarks/cold_start.py``). This benchmark asks
whether another family of recommender, or more of the same, gets further on the same users:

* the new-user tower (``towers.presets.new_user_config``) at seeds 0, 1 and 2;
* the three towers together: the sum of their scores, which one nearest-neighbour search over the
  concatenated user and item vectors serves;
* the tower trained on *every* interaction of the warm users, not only their temporal-user-20
  train part (protocol cold-user-k allows it; ``cold_start.py`` keeps the part so that the same
  model also answers the warm users' test), with most-popular counted on the same data;
* user-kNN and EASE, the memory-based families;
* the three towers blended with user-kNN (z-scored per user): two families, one list.

Part ``dae`` adds a nonlinear family trained on the question itself: a multinomial denoising
autoencoder (Mult-DAE, Liang et al. 2018) that reads a user's first ``m <= 10`` items and is
trained to give all of their later items a high likelihood (``prefix_dae.PrefixDAE``); its width
and epochs are picked on the validation users, and it is reported on the test users at seeds 0-2.

Part ``served`` asks what a new user gets from the service, whose tower preset is the benchmark
preset (not the new-user one) and whose ranker reorders its 100 candidates: the served preset
and the ranker trained for it with the validated settings (``ranking.train.validated_settings``),
on the test users at ``k = 5``, next to the candidate order and most-popular. Part
``served-new-user`` does the same with the new-user preset and a ranker trained for it. Part
``served-routed`` is what the service returns since its artefact holds both towers: the
new-user preset's candidates, rescored by the ranker trained for the benchmark preset.
Part ``served-onboarding`` is ``served-routed`` with onboarding as well: each user goes down the
service's default onboarding list and rates what they have seen of it until they have rated five,
and the same user's first five are compared with it on the same relevant items, both as the
tower orders its candidates and as the ranker reorders them (what the service returns).

Part ``served-cold-ranker`` (``cold_ranker.py``) trains a ranker on new users' impressions
(``ranking.pipeline.train_new_user_ranker_job``) and compares it with the served one on the
new-user tower's candidates, picking per dataset on validation users which the service uses.

Part ``first-five`` says what a user's first five ratings are made of: the share of all users'
first-five slots taken by the ten items most often among them, against those ten items' share of
all ratings (sign-up pages that showed everyone the same films make the first five alike), and
how long users took from their first rating to their last.

Settings (the user-kNN grid, EASE's L2 strength, the blend weight) are picked on validation users,
the carve of ``cold_start.py --only age-knots`` (a second cold-user split, ``default_rng(8)``,
inside the warm users), and then reported on the test users, where nothing is picked.

    python benchmarks/cold_plateau.py --data-dir ../shared/data        # ~25 min on 2 cores
    python benchmarks/cold_plateau.py --parts first-five                 # seconds
    python benchmarks/cold_plateau.py --parts dae                        # ~5 min
    python benchmarks/cold_plateau.py --parts served                     # ~15 min
    python benchmarks/cold_plateau.py --parts served-new-user            # ~15 min
    python benchmarks/cold_plateau.py --parts served-routed              # ~17 min
    python benchmarks/cold_plateau.py --parts served-onboarding \
        --output benchmarks/results/cold_plateau_served_onboarding.json  # ~19 min
    python benchmarks/cold_plateau.py --parts served-cold-ranker \
        --output benchmarks/results/cold_plateau_cold_ranker.json        # ~55 min

Writes ``benchmarks/results/cold_plateau.json``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import baselines as bl
import common
import numpy as np
from cold_common import K, cold_scorer, rank_scores, train_counts
from cold_ranker import cold_ranker
from cold_served import SERVED_PARTS, served
from prefix_dae import PrefixDAE

from towers.coldstart import cold_user_split
from towers.features import UserFeatures
from towers.movielens import load_movielens
from towers.presets import benchmark_options, new_user_config
from towers.splits import chronological, make_split
from towers.train import peak_rss_mb, train_tower

log = logging.getLogger("cold_plateau")
SEEDS = (0, 1, 2)
BLEND_WEIGHTS = (0.1, 0.25, 0.5, 1.0)
# The retrieval benchmark's grid, widened: with five items EASE wants more shrinkage.
EASE_GRID = [*bl.EASE_GRID, {"lam": 10000.0}, {"lam": 30000.0}]


def _zscore(scores: np.ndarray) -> np.ndarray:
    return (scores - scores.mean(axis=1, keepdims=True)) / scores.std(axis=1, keepdims=True)


def _towers(data, train_frame, split, asked) -> tuple[list[str], list[np.ndarray]]:
    """The new-user tower at each seed, trained on ``train_frame``: its item order and its
    cold-user-5 scores per seed."""
    users = UserFeatures.from_frame(data.users)
    times = split.cold.groupby("user_id")["timestamp"].apply(list).to_dict()
    scores = []
    for seed in SEEDS:
        options = benchmark_options(verbose=0, seed=seed, dataset=data.name)
        model = train_tower(data.with_interactions(train_frame), new_user_config(data.name),
                            options).model  # fmt: skip
        scores.append(cold_scorer(model, times, users)(asked, K)[1])
    return list(model.item_ids), scores


def carve(data, split) -> dict:
    """Every family's cold-user-5 Recall@50 over most-popular on ``split``'s cold users, for
    every setting of its grid."""
    asked, relevant = split.first_k(K)
    ids = sorted(asked)
    hist, rel = [asked[u] for u in ids], [relevant[u] for u in ids]
    out: dict = {"users": len(ids)}
    for name, frame in (("part", make_split(split.train, "temporal-user-20").train),
                        ("all", split.train)):  # fmt: skip
        items, scores = _towers(data, frame, split, asked)
        index = {i: n for n, i in enumerate(items)}
        popular = rank_scores(np.tile(train_counts(frame, items), (len(ids), 1)), index, hist, rel)

        def ratio(s: np.ndarray, index=index, base=popular["recall@50"]) -> float:
            return round(rank_scores(s, index, hist, rel)["recall@50"] / base, 4)

        row = {"most-popular": popular, "tower": [ratio(s) for s in scores],
               "towers_summed": ratio(np.sum(scores, axis=0))}  # fmt: skip
        if name == "part":
            x, _ = bl.interaction_matrix(frame, items)
            bags = np.zeros((len(ids), len(items)))
            for r, h in enumerate(hist):
                bags[r, [index[i] for i in h if i in index]] = 1.0
            knn = {}
            for params in bl.USER_KNN_GRID:
                knn[str(params)] = bl.user_knn_scores(bags, x, **params)
            row["user_knn"] = {p: ratio(s) for p, s in knn.items()}
            row["ease"] = {str(p["lam"]): ratio(bags @ bl.ease_weights(x, **p)) for p in EASE_GRID}
            summed = _zscore(np.sum(scores, axis=0))
            row["blend"] = {
                p: {str(w): ratio(summed + w * _zscore(s)) for w in BLEND_WEIGHTS}
                for p, s in knn.items()
            }
        out[name] = row
        log.info("%s %s: %s", data.name, name, {k: v for k, v in row.items() if k != "blend"})
    return out


def plateau(data) -> dict:
    """:func:`carve` on validation users, the picks, and :func:`carve` on the test users."""
    outer = cold_user_split(data.interactions)
    val = carve(data, cold_user_split(outer.train, seed=8))
    test = carve(data, outer)
    part = val["part"]
    knn = max(part["user_knn"], key=part["user_knn"].get)
    lam = max(part["ease"], key=part["ease"].get)
    weight = max(part["blend"][knn], key=part["blend"][knn].get)
    rows = {
        "tower (mean of seeds 0-2)": lambda c: float(np.mean(c["part"]["tower"])),
        "three towers summed": lambda c: c["part"]["towers_summed"],
        "tower on every warm interaction (mean)": lambda c: float(np.mean(c["all"]["tower"])),
        "three such towers summed": lambda c: c["all"]["towers_summed"],
        f"user-kNN {knn}": lambda c: c["part"]["user_knn"][knn],
        f"EASE lam={lam}": lambda c: c["part"]["ease"][lam],
        f"three towers + user-kNN, weight {weight}": lambda c: c["part"]["blend"][knn][weight],
    }
    summary = {
        name: {"validation": round(get(val), 4), "test": round(get(test), 4)}
        for name, get in rows.items()
    }
    log.info("%s summary: %s", data.name, summary)
    return {"picks": {"user_knn": knn, "ease_lam": lam, "blend_weight": weight},
            "summary": summary, "validation": val, "test": test,
            "validation_users": val["users"], "test_users": test["users"]}  # fmt: skip


DAE_HIDDEN = (200, 600)
DAE_EPOCHS = (5, 10, 15, 20, 30)


def _dae_setting(hidden: int, epochs: int) -> str:
    return f"hidden {hidden}, epochs {epochs}"


def _dae_carve(split, hiddens=DAE_HIDDEN, epochs=DAE_EPOCHS, seeds=(0,)) -> dict:
    """:class:`prefix_dae.PrefixDAE` trained on ``split``'s warm users (their temporal-user-20
    train part, as the other families) and asked about its cold users at ``k = 5``: Recall@50
    over most-popular for each width, after each number of epochs, at each seed."""
    frame = chronological(make_split(split.train, "temporal-user-20").train)
    items = sorted(frame["item_id"].astype(str).unique())
    index = {i: n for n, i in enumerate(items)}
    sequences = [np.array([index[i] for i in group.astype(str)], np.int64)
                 for _, group in frame.groupby("user_id", sort=True)["item_id"]]  # fmt: skip
    asked, relevant = split.first_k(K)
    ids = sorted(asked)
    hist, rel = [asked[u] for u in ids], [relevant[u] for u in ids]
    bags = np.zeros((len(ids), len(items)), np.float32)
    for r, h in enumerate(hist):
        bags[r, [index[i] for i in h if i in index]] = 1.0
    popular = rank_scores(np.tile(train_counts(frame, items), (len(ids), 1)), index, hist, rel)
    out: dict = {"users": len(ids), "most-popular": popular, "grid": {}}
    for hidden in hiddens:
        for seed in seeds:
            model, done = PrefixDAE(len(items), hidden=hidden, seed=seed), 0
            for epoch in epochs:
                model.fit(sequences, epoch - done)
                done = epoch
                ratio = rank_scores(model.scores(bags), index, hist, rel)["recall@50"]
                cell = out["grid"].setdefault(_dae_setting(hidden, epoch), [])
                cell.append(round(ratio / popular["recall@50"], 4))
    log.info("Mult-DAE on first items: %s", out["grid"])
    return out


def dae(data) -> dict:
    """Mult-DAE trained on users' first items against their later ones: width and epochs picked
    on the validation users (seed 0), then reported on the test users at seeds 0-2."""
    outer = cold_user_split(data.interactions)
    val = _dae_carve(cold_user_split(outer.train, seed=8))
    settings = [(h, e) for h in DAE_HIDDEN for e in DAE_EPOCHS]
    hidden, epochs = max(settings, key=lambda s: val["grid"][_dae_setting(*s)][0])
    chosen = _dae_setting(hidden, epochs)
    test = _dae_carve(outer, hiddens=(hidden,), epochs=(epochs,), seeds=SEEDS)
    summary = {"validation": val["grid"][chosen][0], "test": test["grid"][chosen],
               "test_mean": round(float(np.mean(test["grid"][chosen])), 4)}  # fmt: skip
    log.info("%s Mult-DAE %s: %s", data.name, chosen, summary)
    return {"chosen": chosen, "summary": summary, "validation": val, "test": test}


def first_five(data, top: int = 10) -> dict:
    """How alike users' first ``K`` items (in protocol order) are: the ``top`` items most often
    among them, their share of the first-``K`` slots, and their share of all ratings; and how
    long a user's ratings span (from their first to their last)."""
    ordered = chronological(data.interactions)
    first = ordered.groupby("user_id", sort=False).head(K)
    counts = first["item_id"].astype(str).value_counts()
    everywhere = ordered["item_id"].astype(str).value_counts()
    common_ = counts.index[:top]
    span = ordered.groupby("user_id")["timestamp"].agg(lambda t: t.max() - t.min()) / 3600.0
    return {"users": int(ordered["user_id"].nunique()), "distinct_items": int(len(counts)),
            # IDs and counts only: titles are MovieLens's files, which may not be redistributed.
            f"top{top}": [{"item_id": i, "users": int(counts[i])} for i in common_],
            f"top{top}_share_of_first_{K}": round(float(counts.iloc[:top].sum() / len(first)), 4),
            f"top{top}_share_of_all_ratings": round(
                float(everywhere.reindex(common_).sum() / len(ordered)), 4),
            "median_hours_first_to_last_rating": round(float(span.median()), 2),
            "users_rating_within_a_day": round(float((span < 24.0).mean()), 4)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", default=None, help="MovieLens folder (default: $NEXTWATCH_DATA)"
    )
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-latest-small"])
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["families", "first-five", "dae", *SERVED_PARTS, "served-cold-ranker"],
        default=["families", "first-five"],
    )
    parser.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    payload: dict = {"k": K, "seeds": list(SEEDS), "datasets": {}}
    for name in args.datasets:
        data = load_movielens(name, args.data_dir)
        entry = payload["datasets"].setdefault(name, {})
        if "first-five" in args.parts:
            entry["first_five"] = first_five(data)
        if "families" in args.parts:
            entry.update(plateau(data))
        if "dae" in args.parts:
            entry["mult_dae"] = dae(data)
        for part in SERVED_PARTS:
            if part in args.parts:
                with tempfile.TemporaryDirectory(prefix="nextwatch-cold-served-") as work:
                    entry[part.replace("-", "_")] = served(data, Path(work), part)
        if "served-cold-ranker" in args.parts:
            with tempfile.TemporaryDirectory(prefix="nextwatch-cold-ranker-") as work:
                entry["served_cold_ranker"] = cold_ranker(data, Path(work))
        common.write_results("cold_plateau", payload, args.output)  # partial results survive
    payload["wall_seconds"] = round(time.perf_counter() - start, 1)
    payload["peak_rss_mb"] = peak_rss_mb()
    log.info("wrote %s", common.write_results("cold_plateau", payload, args.output))


if __name__ == "__main__":
    main()
