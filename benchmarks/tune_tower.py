"""Tune the nextwatch tower on validation data only, as the baselines are tuned.

The validation split is carved from the protocol's train split with the same protocol
(``baselines.validation_split``), so the test split is never looked at. Each config is a Python dict
literal of TowerConfig / TrainOptions fields on top of the benchmark preset.

    python benchmarks/tune_tower.py --dataset ml-latest-small "{'depth': 2}" "{'dropout': 0.3}"

Writes ``benchmarks/results/tune_tower.json`` (appending to earlier trials; each trial records the
commit and date it ran at; the 13 trials before 2026-11-29 did not, and the last of them ran at
3e4c2ce).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import baselines as bl
import common

from towers.evaluate import TowerScorer, evaluate_retrieval
from towers.movielens import load_movielens
from towers.presets import benchmark_config, benchmark_options
from towers.splits import make_split
from towers.train import train_tower


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", default=["{}"])
    parser.add_argument("--dataset", default="ml-latest-small")
    parser.add_argument("--protocol", default="temporal-user-20")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--output", default=None, help="JSON path to append to (default: benchmarks/results/)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = load_movielens(args.dataset, args.data_dir)
    val = bl.validation_split(make_split(data.interactions, args.protocol))
    train = data.with_interactions(val.train)
    path = Path(args.output) if args.output else common.RESULTS / "tune_tower.json"
    trials = json.loads(path.read_text())["trials"] if path.exists() else []
    config_fields = {f.name for f in fields(benchmark_config(args.dataset)) if f.init}
    for spec in args.configs:
        overrides = ast.literal_eval(spec)
        config = replace(
            benchmark_config(args.dataset),
            **{k: v for k, v in overrides.items() if k in config_fields},
        )
        options = replace(
            benchmark_options(verbose=0, dataset=args.dataset),
            **{k: v for k, v in overrides.items() if k not in config_fields},
        )
        start = time.perf_counter()
        result = train_tower(train, config, options)
        seconds = round(time.perf_counter() - start, 1)
        scorer = TowerScorer(result.model, train)
        metrics = evaluate_retrieval(scorer, scorer.item_ids, val)
        trial = {
            "dataset": args.dataset,
            "protocol": args.protocol,
            "overrides": overrides,
            "config": config.to_dict(),
            "options": asdict(options),
            "train_seconds": seconds,
            "commit": common.git_commit(),
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "recall@100": round(metrics["recall@100"], 4),
            "ndcg@10": round(metrics["ndcg@10"], 4),
        }
        print(json.dumps(trial), flush=True)
        trials.append(trial)
    common.write_results("tune_tower", {"trials": trials}, path)


if __name__ == "__main__":
    main()
