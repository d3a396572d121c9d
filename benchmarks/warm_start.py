"""Warm-start benchmark (protocol warm-start): continuing a model on new events vs retraining.

For ml-latest-small and ml-100k, split the log by global time at its 80 % and 90 % quantiles.
Train the benchmark preset on the first 80 % (the parent). Then (a) warm-start from the parent on
the first 90 % (new: the events from the 80 % quantile on, plus a replay sample of older
examples; new items get their rows from the parent's content projection), and (b) retrain from
scratch on the first 90 %. Both are evaluated on the last 10 % as in temporal-user-20: every item
ranked for each user with events there and before, their earlier items excluded, the last-10 %
items relevant. The parent itself (stale: it never saw the 80-90 % events) is reported too.

Only a few dozen users have events both in the last 10 % and before, so one training run's
figures move by several percent with its seed. Each arm is therefore trained with several seeds
(parent, warm start and full retrain all seeded alike), and the comparison is of the means.

Targets: the warm start loses at most 2 % relative Recall@100 and NDCG@10, in at most 25 % of
the full retrain's wall time.

A warm start continues the parent's Adam (its moments and step count), as ``nextwatch retrain``
does; ``--optimizer fresh`` starts a fresh one instead, ``--optimizer both`` runs each variant
both ways.

``--tune`` picks the warm start's settings without the test events: the same protocol shifted
one tenth earlier (parent on the first 70 %, warm start and full retrain on the first 80 %,
evaluated on the 80-90 % events), for every combination of the candidate learning rates, epochs
and replay fractions. It records, as ``chosen``, the variant whose worst relative loss (Recall@100
and NDCG@10 on every dataset) is smallest among those within the time target on every dataset.
``--shift 2`` moves it two tenths earlier (test on the 70-80 % events): a second validation
window, with other users, where one window's few dozen users cannot tell the variants apart.
A ``--variant`` may also name a rate decay (``cosine``: from the rate to 0 over the warm start)
and the softmax to train with (``full`` or ``sampled``; default: as ``nextwatch retrain``
picks, :attr:`towers.warmstart.WarmStart.softmax`).
Without ``--learning-rates``, ``--epochs`` or ``--variant``, each dataset runs the rate,
epochs and decay of its own warm-start preset (:func:`towers.presets.warm_start_options`), and each
variant's ``meets_targets`` says whether it met both targets on that dataset.

    python benchmarks/warm_start.py --data-dir ../shared/data          # ~10 min on 2 cores
    python benchmarks/warm_start.py --data-dir ../shared/data --tune   # ~10 min
    python benchmarks/warm_start.py --data-dir ../shared/data --tune \
        --learning-rates 1e-3 3e-3 --epochs 2 6 --replay-fraction 0.1 1.0   # 8 variants
    python benchmarks/warm_start.py --data-dir ../shared/data --tune \
        --variant 1e-3 6 0.1 --variant 1e-3 1 1.0                          # just these two
    python benchmarks/warm_start.py --data-dir ../shared/data --tune --shift 2 \
        --variant 1e-2 2 0.1 cosine --variant 3e-3 2 0.1 constant full     # another window
    python benchmarks/warm_start.py --data-dir ../shared/data --optimizer both  # the table

Writes ``benchmarks/results/warm_start.json`` (``warm_start_tune.json`` with ``--tune``).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from dataclasses import replace

import common
import numpy as np
import pandas as pd

from towers.content import ContentProjection, frame_tokens
from towers.evaluate import TowerScorer, evaluate_retrieval
from towers.movielens import load_movielens
from towers.optim import optimizer_state
from towers.presets import benchmark_config, benchmark_options, warm_start_options
from towers.splits import Split
from towers.train import peak_rss_mb, train_tower
from towers.warmstart import WarmStart, warm_start

log = logging.getLogger("benchmarks.warm_start")
KEEP = ("recall@10", "recall@50", "recall@100", "ndcg@10", "users")
COMPARED = ("recall@100", "ndcg@10", "recall@50")
TEST_CUTS = (0.8, 0.9, None)  # parent before the first, retrain before the second, test after
TUNE_CUTS = (0.7, 0.8, 0.9)  # the same, one tenth earlier: test on the 80-90 % events
TIME_TARGET = 0.25  # of the full retrain's wall time
LOSS_TARGET = 0.02  # relative, of Recall@100 and NDCG@10


def tune_cuts(shift: int) -> tuple[float, float, float]:
    """The validation cuts ``shift`` tenths earlier than the test's (1: :data:`TUNE_CUTS`)."""
    return tuple(round(q - shift / 10, 1) for q in (0.8, 0.9, 1.0))  # type: ignore[return-value]


def variant_label(
    rate: float,
    epochs: int,
    replay: float,
    continued: bool = False,
    decay: str = "constant",
    softmax: str | None = None,
) -> str:
    """The key of one warm-start variant in the JSON: ``"lr 0.001, 6 epochs, replay 0.1"``,
    then ``", cosine"`` for a cosine rate, ``", full softmax"`` (or sampled) when the variant
    names one (without it, :attr:`towers.warmstart.WarmStart.softmax`'s default decides), and
    ``", Adam continued"`` when it continues the parent's optimizer state."""
    return (
        f"lr {rate:g}, {epochs} epochs, replay {replay:g}"
        + (f", {decay}" if decay != "constant" else "")
        + (f", {softmax} softmax" if softmax else "")
        + (", Adam continued" * continued)
    )


def cut_times(interactions: pd.DataFrame, quantiles: tuple) -> list[int | None]:
    """The timestamps at the given positions of the time-sorted log (None stays None: the end)."""
    times = np.sort(interactions["timestamp"].to_numpy())
    return [None if q is None else int(times[int(q * len(times))]) for q in quantiles]


def evaluate_over(model, train, split: Split, items: list[str]) -> dict:
    """Temporal-user-20 metrics of ``model`` ranking all of ``items``, the same relevant sets for
    every arm: an item the model has no vector for (the stale parent lacks the items that
    appeared since) scores -inf, so a test event on it is a miss rather than left out."""
    scorer = TowerScorer(model, train)
    position = {i: n for n, i in enumerate(scorer.item_ids)}
    columns = np.array([position.get(i, -1) for i in items])
    known = columns >= 0

    def score(users) -> np.ndarray:
        out = np.full((len(users), len(items)), -np.inf)
        out[:, known] = np.asarray(scorer(users))[:, columns[known]]
        return out

    return evaluate_retrieval(score, items, split)


def _mean(runs: list[dict]) -> dict:
    return {k: round(float(np.mean([r[k] for r in runs])), 4) for k in runs[0]}


def run_seed(data, times: list, seed: int, variants: list[tuple]) -> dict:
    """Parent, full retrain and one warm start per ``(learning rate, epochs, replay fraction)``
    variant, all seeded with ``seed``; ``times`` are the :func:`cut_times`."""
    t_parent, t_retrain, t_end = times
    frame = data.interactions
    before = data.with_interactions(frame[frame["timestamp"] < t_parent].reset_index(drop=True))
    retrain = data.with_interactions(frame[frame["timestamp"] < t_retrain].reset_index(drop=True))
    test = frame[frame["timestamp"] >= t_retrain]
    if t_end is not None:
        test = test[test["timestamp"] < t_end]
    test = test[test["user_id"].isin(set(retrain.interactions["user_id"]))]
    known = test["item_id"].isin(set(retrain.interactions["item_id"]))
    split = Split(
        "warm-start", retrain.interactions, test[known].reset_index(drop=True), int((~known).sum())
    )
    config = benchmark_config(data.name)
    options = benchmark_options(verbose=0, seed=seed, dataset=data.name)
    items = sorted(set(retrain.interactions["item_id"].astype(str)))

    def row(result, seconds: float) -> dict:
        metrics = evaluate_over(result.model, retrain, split, items)
        return {
            **{k: round(metrics[k], 4) for k in KEEP},
            "wall_seconds": round(seconds, 2),
            "examples": result.metrics["examples"],
            "items": result.model.num_items,
        }

    parent = train_tower(before, config, options)
    state = optimizer_state(parent.model.optimizer, parent.model.trainable_variables)
    start = time.perf_counter()
    projection = ContentProjection.fit(
        frame_tokens(data.items, parent.model.item_ids),
        parent.model.item_matrix(),
        parent.model.item_counts,
    )
    projection_seconds = time.perf_counter() - start
    out = {
        "seed": seed,
        "test_events": len(split.test),
        "cold_test_dropped": split.cold_test_dropped,
        "projection_fit_seconds": round(projection_seconds, 2),
        "parent": row(parent, parent.metrics["train_seconds"]),
        "warm": {},
    }
    # The warm start trains as `nextwatch retrain` does (the dataset's warm-start options, batch
    # 256 at a constant rate), at each variant's rate and epochs.
    warm_options = warm_start_options(verbose=0, seed=seed, dataset=data.name)
    for rate, epochs, replay, continued, decay, softmax in variants:
        start = time.perf_counter()
        warm, lineage = warm_start(
            parent.model, retrain, WarmStart(t_parent, replay, continued, softmax),
            replace(warm_options, learning_rate=rate, epochs=epochs, decay=decay),
            projection, state,
        )  # fmt: skip
        label = variant_label(rate, epochs, replay, continued, decay, softmax)
        out["warm"][label] = row(warm, time.perf_counter() - start)
        out["lineage"] = lineage
    start = time.perf_counter()
    full = train_tower(retrain, config, options)
    out["full"] = row(full, time.perf_counter() - start)
    log.info("%s seed %d: %s", data.name, seed, out)
    return out


def run(data, cuts: tuple, seeds: list[int], variants: list[tuple]) -> dict:
    """Every seed's runs, the means over seeds, and the warm starts against the full retrain."""
    times = cut_times(data.interactions, cuts)
    runs = [run_seed(data, times, s, variants) for s in seeds]
    t_parent, t_retrain, t_end = times
    full = _mean([r["full"] for r in runs])
    out = {
        "cuts": {"parent_before": t_parent, "retrain_before": t_retrain, "test_before": t_end},
        "test_events": runs[0]["test_events"],
        "lineage": runs[-1]["lineage"],
        "mean": {"parent (stale)": _mean([r["parent"] for r in runs]), "full retrain": full},
        "warm_vs_full": {},
        "runs": runs,
    }
    for label in (variant_label(*v) for v in variants):
        warm = _mean([r["warm"][label] for r in runs])
        out["mean"][f"warm start ({label})"] = warm
        row = {
            **{f"{k}_relative_loss": round((full[k] - warm[k]) / full[k], 4) for k in COMPARED},
            "wall_time_ratio": round(warm["wall_seconds"] / full["wall_seconds"], 3),
        }
        row["meets_targets"] = row["wall_time_ratio"] <= TIME_TARGET and all(
            row[f"{k}_relative_loss"] <= LOSS_TARGET for k in ("recall@100", "ndcg@10")
        )
        out["warm_vs_full"][label] = row
    log.info("%s: %s", data.name, {k: out[k] for k in ("mean", "warm_vs_full")})
    return out


def choose(datasets: dict) -> dict | None:
    """The variant with the smallest worst relative loss (Recall@100, NDCG@10, every dataset)
    among those run on every dataset within ``TIME_TARGET`` of the full retrain's time there,
    or None."""
    best = None
    labels = [set(d["warm_vs_full"]) for d in datasets.values()]
    for label in sorted(set.intersection(*labels)):
        rows = [d["warm_vs_full"][label] for d in datasets.values()]
        if any(r["wall_time_ratio"] > TIME_TARGET for r in rows):
            continue
        worst = max(r[f"{m}_relative_loss"] for r in rows for m in ("recall@100", "ndcg@10"))
        if best is None or worst < best["worst_relative_loss"]:
            best = {"variant": label, "worst_relative_loss": worst}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="MovieLens (default: $NEXTWATCH_DATA)")
    parser.add_argument("--datasets", nargs="+", default=["ml-latest-small", "ml-100k"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--replay-fraction", nargs="+", type=float, default=[WarmStart().replay_fraction],
        help="of the warm start, one or more (default: the preset's, %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--learning-rates", nargs="+", type=float,
        help="of the warm start (default: the warm-start preset's; with --tune 3e-4 1e-3 3e-3)",
    )  # fmt: skip
    parser.add_argument(
        "--epochs", nargs="+", type=int,
        help="of the warm start, one or more (default: the warm-start preset's)",
    )  # fmt: skip
    parser.add_argument(
        "--variant", nargs="+", action="append", metavar="RATE EPOCHS REPLAY [DECAY [SOFTMAX]]",
        help="one warm start to run (repeatable); replaces the product of the three lists. "
        "DECAY is constant (default) or cosine; SOFTMAX full or sampled (default: as retrain "
        "picks)",
    )  # fmt: skip
    parser.add_argument(
        "--optimizer", choices=("fresh", "continued", "both"),
        default="continued" if WarmStart().continue_optimizer else "fresh",
        help="a fresh Adam per warm start, the parent's continued, or each variant both ways "
        "(default: as nextwatch retrain, %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--tune", action="store_true", help="validation shift: test on the 80-90 %% events"
    )
    parser.add_argument(
        "--shift", type=int, default=1, choices=(1, 2, 3),
        help="with --tune, how many tenths earlier (2: parent on the first 60 %%, test on the "
        "70-80 %% events), a second validation window with other users",
    )  # fmt: skip
    parser.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    modes = {"fresh": (False,), "continued": (True,), "both": (False, True)}[args.optimizer]

    def variants_for(dataset: str) -> list[tuple]:
        """The warm starts to run on ``dataset``: those asked for, else its preset's."""
        preset = warm_start_options(dataset=dataset)
        default = [3e-4, 1e-3, 3e-3] if args.tune else [preset.learning_rate]
        rates = args.learning_rates or default
        epochs = args.epochs or [preset.epochs]
        variants = [
            (r, e, f, preset.decay, None)
            for r, e, f in itertools.product(rates, epochs, args.replay_fraction)
        ]
        if args.variant:
            variants = [parse_variant(v) for v in args.variant]
        return [(r, e, f, c, d, s) for r, e, f, d, s in variants for c in modes]

    def parse_variant(tokens: list[str]) -> tuple:
        usage = "--variant takes RATE EPOCHS REPLAY [DECAY [SOFTMAX]], e.g. 1e-3 6 0.1 cosine full"
        if not 3 <= len(tokens) <= 5:
            parser.error(f"{usage}: got {' '.join(tokens)}")
        decay = tokens[3] if len(tokens) > 3 else "constant"
        softmax = tokens[4] if len(tokens) > 4 else None
        if decay not in ("constant", "cosine") or softmax not in (None, "full", "sampled"):
            parser.error(f"{usage}: got {' '.join(tokens)}")
        try:
            return float(tokens[0]), int(tokens[1]), float(tokens[2]), decay, softmax
        except ValueError as err:
            parser.error(f"{usage}: {err}")

    per_dataset = {name: variants_for(name) for name in args.datasets}
    every = [v for name in args.datasets for v in per_dataset[name]]
    for rate, count, replay, *_ in every:  # before any training, not after the first parent
        if not rate > 0 or count < 1 or not 0 <= replay <= 1:
            parser.error(
                f"a warm start needs a rate > 0, epochs >= 1 and a replay fraction in [0, 1], "
                f"got {rate:g}, {count}, {replay:g}"
            )
    if args.shift != 1 and not args.tune:
        parser.error("--shift needs --tune")
    cuts = tune_cuts(args.shift) if args.tune else TEST_CUTS
    start = time.perf_counter()
    payload: dict = {
        "protocol": "warm-start" + (f" (validation shift {args.shift})" if args.tune else ""),
        "cuts": list(cuts),
        "config": {n: benchmark_config(n).to_dict() for n in args.datasets},
        "options": {n: benchmark_options(dataset=n).__dict__ for n in args.datasets},
        "seeds": args.seeds,
        "variants": {n: [variant_label(*v) for v in per_dataset[n]] for n in args.datasets},
        "warm_start_learning_rates": sorted({v[0] for v in every}),
        "warm_start_epochs": sorted({v[1] for v in every}),
        "replay_fractions": sorted({v[2] for v in every}),
        "optimizer": args.optimizer,
        "datasets": {},
    }
    for name in args.datasets:
        payload["datasets"][name] = run(
            load_movielens(name, args.data_dir), cuts, args.seeds, per_dataset[name]
        )
    if args.tune:  # a test run reports each variant's meets_targets instead
        payload["chosen"] = choose(payload["datasets"])
    payload["wall_seconds"] = round(time.perf_counter() - start, 1)
    payload["peak_rss_mb"] = peak_rss_mb()
    name = "warm_start_tune" if args.tune else "warm_start"
    log.info("wrote %s", common.write_results(name, payload, args.output))


if __name__ == "__main__":
    main()
