"""Warm-start benchmark (protocol warm-start): continuing a model on new events vs retraining.

For ml-latest-small and ml-100k, split the log by global time at its 80 % and 90 % quantiles.
Train the benchmark preset on the first 80 % (the parent). Then (a) warm-start from the parent on
the first 90 % (new: the events from the 80 % quantile on, plus a replay sample of older
examples; new items get their rows from the parent's content projection), and (b) retrain from
scratch on the first 90 %. Both are evaluated on the last 10 % as in temporal-user-20: every item
ranked for each user with events there and before, their earlier items excluded, the last-10 %
items relevant. The parent itself (stale: it never saw the 80-90 % events) is reported too.

Targets: the warm start loses at most 2 % relative Recall@100 and NDCG@10, in at most 25 % of
the full retrain's wall time.

    python benchmarks/warm_start.py --data-dir ../shared/data      # ~6 min on 2 cores

Writes ``benchmarks/results/warm_start.json``.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace

import common
import numpy as np
import pandas as pd

from towers.content import ContentProjection, frame_tokens
from towers.movielens import load_movielens
from towers.pipeline import evaluate_tower
from towers.presets import benchmark_config, benchmark_options
from towers.splits import Split
from towers.train import peak_rss_mb, train_tower
from towers.warmstart import WarmStart, warm_start

log = logging.getLogger("benchmarks.warm_start")
KEEP = ("recall@10", "recall@50", "recall@100", "ndcg@10", "users")


def time_split(interactions: pd.DataFrame) -> tuple[int, int]:
    """The timestamps at the 80 % and 90 % positions of the time-sorted log: events before the
    first are the parent's, before the second the retrain's, the rest are test."""
    times = np.sort(interactions["timestamp"].to_numpy())
    return int(times[int(0.8 * len(times))]), int(times[int(0.9 * len(times))])


def run(data, replay_fraction: float, learning_rate: float | None = None) -> dict:
    t80, t90 = time_split(data.interactions)
    frame = data.interactions
    first80 = data.with_interactions(frame[frame["timestamp"] < t80].reset_index(drop=True))
    first90 = data.with_interactions(frame[frame["timestamp"] < t90].reset_index(drop=True))
    test = frame[frame["timestamp"] >= t90]
    test = test[test["user_id"].isin(set(first90.interactions["user_id"]))]
    known = test["item_id"].isin(set(first90.interactions["item_id"]))
    split = Split(
        "warm-start", first90.interactions, test[known].reset_index(drop=True), int((~known).sum())
    )
    config, options = benchmark_config(data.name), benchmark_options(verbose=0)

    parent = train_tower(first80, config, options)
    start = time.perf_counter()
    projection = ContentProjection.fit(
        frame_tokens(data.items, parent.model.item_ids),
        parent.model.item_matrix(),
        parent.model.item_counts,
    )
    projection_seconds = time.perf_counter() - start

    start = time.perf_counter()
    warm_options = replace(options, learning_rate=learning_rate or options.learning_rate)
    warm, lineage = warm_start(
        parent.model, first90, WarmStart(since=t80, replay_fraction=replay_fraction),
        warm_options, projection,
    )  # fmt: skip
    warm_seconds = time.perf_counter() - start
    start = time.perf_counter()
    full = train_tower(first90, config, options)
    full_seconds = time.perf_counter() - start

    models = {}
    for name, result, seconds in (
        ("parent (first 80 %, stale)", parent, parent.metrics["train_seconds"]),
        ("warm start", warm, warm_seconds),
        ("full retrain", full, full_seconds),
    ):
        metrics = evaluate_tower(result.model, first90, split)
        models[name] = {
            **{k: round(metrics[k], 4) for k in KEEP},
            "wall_seconds": round(seconds, 2),
            "examples": result.metrics["examples"],
            "items": result.model.num_items,
        }
    w, f = models["warm start"], models["full retrain"]
    out = {
        "t80": t80,
        "t90": t90,
        "test_events": len(split.test),
        "cold_test_dropped": split.cold_test_dropped,
        "lineage": lineage,
        "projection_fit_seconds": round(projection_seconds, 2),
        "models": models,
        "relative_loss": {
            k: round((f[k] - w[k]) / f[k], 4) for k in ("recall@100", "ndcg@10", "recall@50")
        },
        "wall_time_ratio": round(w["wall_seconds"] / f["wall_seconds"], 3),
    }
    log.info("%s: %s", data.name, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="MovieLens (default: $NEXTWATCH_DATA)")
    parser.add_argument("--datasets", nargs="+", default=["ml-latest-small", "ml-100k"])
    parser.add_argument("--replay-fraction", type=float, default=0.1)
    parser.add_argument(
        "--learning-rate", type=float, help="of the warm start (default: the preset's)"
    )
    parser.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    payload: dict = {
        "protocol": "warm-start",
        "config": benchmark_config().to_dict(),
        "options": benchmark_options().__dict__,
        "replay_fraction": args.replay_fraction,
        "warm_start_learning_rate": args.learning_rate or benchmark_options().learning_rate,
        "datasets": {},
    }
    for name in args.datasets:
        payload["datasets"][name] = run(
            load_movielens(name, args.data_dir), args.replay_fraction, args.learning_rate
        )
    payload["wall_seconds"] = round(time.perf_counter() - start, 1)
    payload["peak_rss_mb"] = peak_rss_mb()
    log.info("wrote %s", common.write_results("warm_start", payload, args.output))


if __name__ == "__main__":
    main()
