"""Retrieval benchmark: nextwatch against most-popular, EASE, ALS and the TFRS two-tower, one run.

Protocols (``../shared/PROTOCOLS.md``): temporal-user-20 and leave-last-one on ml-latest-small and
ml-100k (Recall@10/50/100/300, NDCG@10, HR@10), tfrs-80-20 top-100 accuracy on ml-100k, and two
ablations on ml-latest-small temporal-user-20 (depth 0-3; feature groups).

    python benchmarks/retrieval.py --data-dir ../shared/data       # everything (~28 min, 2 cores)
    python benchmarks/retrieval.py --only main --datasets ml-100k       # a part

Writes ``benchmarks/results/retrieval.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import baselines as bl
import common

from towers.evaluate import (
    evaluate_retrieval,
    evaluate_top_k_accuracy,
    evaluate_top_k_accuracy_at_events,
)
from towers.movielens import load_movielens
from towers.pipeline import evaluate_tower
from towers.presets import benchmark_config, benchmark_options
from towers.splits import Split, make_split
from towers.train import peak_rss_mb, train_tower

log = logging.getLogger("benchmarks.retrieval")


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - start, 2)


def run_nextwatch(data, split: Split, config=None) -> dict:
    config = config or benchmark_config(data.name)
    train = data.with_interactions(split.train)
    result = train_tower(train, config, benchmark_options(verbose=0, dataset=data.name))
    metrics, eval_seconds = _timed(evaluate_tower, result.model, train, split)
    m = result.metrics
    return {
        **metrics,
        "train_seconds": m["train_seconds"],
        "examples": m["examples"],
        "examples_per_second": m["examples_per_second"],
        "eval_seconds": eval_seconds,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_baselines(split: Split, top_k_only: bool = False) -> dict:
    """Most-popular, tuned EASE, tuned ALS and the TFRS two-tower on ``split``."""
    items = sorted(split.train["item_id"].astype(str).unique())

    def measure(score) -> dict:
        if top_k_only:
            return {"top100_accuracy": evaluate_top_k_accuracy(score, items, split, 100)}
        return evaluate_retrieval(score, items, split)

    out = {}
    score, secs = _timed(bl.most_popular, split.train, items)
    out["most-popular"] = {**measure(score), "train_seconds": secs}
    for name, make, grid in (("ease", bl.ease, bl.EASE_GRID), ("als", bl.als, bl.ALS_GRID)):
        (params, trials), tune_secs = _timed(bl.tune, split, make, grid)
        score, secs = _timed(make, split.train, items, **params)
        out[name] = {
            **measure(score),
            "params": params,
            "validation": trials,
            "train_seconds": secs,
            "tune_seconds": tune_secs,
        }
    score, secs = _timed(bl.tfrs_two_tower, split.train, items)
    out["tfrs-two-tower"] = {**measure(score), "train_seconds": secs}
    return out


def main_comparison(data_dir: str, datasets: list[str], protocols: list[str]) -> list[dict]:
    rows = []
    for name in datasets:
        data = load_movielens(name, data_dir)
        for protocol in protocols:
            split = make_split(data.interactions, protocol)
            log.info("%s / %s: nextwatch", name, protocol)
            models = {"nextwatch": run_nextwatch(data, split)}
            log.info("%s / %s: baselines", name, protocol)
            models.update(run_baselines(split))
            rows.append(
                {
                    "dataset": name,
                    "protocol": protocol,
                    "models": models,
                    "cold_test_dropped": split.cold_test_dropped,
                }
            )
            log.info(
                "%s / %s: %s",
                name,
                protocol,
                {k: (round(v["recall@100"], 4), round(v["ndcg@10"], 4)) for k, v in models.items()},
            )
    return rows


def tfrs_comparison(data_dir: str) -> dict:
    data = load_movielens("ml-100k", data_dir)
    split = make_split(data.interactions, "tfrs-80-20")
    models = {"nextwatch": run_nextwatch(data, split)}
    models.update(run_baselines(split, top_k_only=True))
    # Per-row queries at each row's time, for the baselines that can be asked that way: EASE
    # (the bag before the time, its λ as tuned above) and most-popular (the same list for every
    # query). ALS and the TFRS two-tower fit one vector per user from all their rows.
    items = sorted(split.train["item_id"].astype(str).unique())
    ease_at = bl.ease_at_events(split.train, items, **models["ease"]["params"])
    models["ease"]["top100_accuracy_at_event"] = evaluate_top_k_accuracy_at_events(
        ease_at, items, split, 100
    )
    models["most-popular"]["top100_accuracy_at_event"] = models["most-popular"]["top100_accuracy"]
    models["published-tfrs-basic"] = {"top100_accuracy": 0.233, "source": "TFRS basic tutorial"}
    models["published-tfrs-deep"] = {"top100_accuracy": 0.29, "source": "TFRS deep tutorial"}
    return {"dataset": "ml-100k", "protocol": "tfrs-80-20", "models": models}


def ablations(data_dir: str) -> dict:
    data = load_movielens("ml-latest-small", data_dir)
    split = make_split(data.interactions, "temporal-user-20")
    base = benchmark_config(data.name)
    depth = {str(d): run_nextwatch(data, split, replace(base, depth=d)) for d in range(4)}
    features = {
        "history": replace(base, use_tokens=False, use_demographics=False, use_example_age=False),
        "history+tokens": replace(base, use_demographics=False, use_example_age=False),
        "history+tokens+demographics+example_age": base,
    }
    feats = {k: run_nextwatch(data, split, cfg) for k, cfg in features.items()}
    # Demographics exist only in ml-100k: run the feature ablation there too.
    data100 = load_movielens("ml-100k", data_dir)
    split100 = make_split(data100.interactions, "temporal-user-20")
    base100 = benchmark_config(data100.name)
    feats100 = {
        "history": replace(
            base100, use_tokens=False, use_demographics=False, use_example_age=False
        ),
        "history+tokens": replace(base100, use_demographics=False, use_example_age=False),
        "history+tokens+demographics+example_age": base100,
    }
    return {
        "protocol": "temporal-user-20",
        "depth": {"dataset": "ml-latest-small", "results": depth},
        "features": {
            "ml-latest-small": feats,
            "ml-100k": {k: run_nextwatch(data100, split100, c) for k, c in feats100.items()},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", default=None, help="MovieLens folder (default: $NEXTWATCH_DATA)"
    )
    parser.add_argument("--datasets", nargs="+", default=["ml-latest-small", "ml-100k"])
    parser.add_argument("--protocols", nargs="+", default=["temporal-user-20", "leave-last-one"])
    parser.add_argument(
        "--only",
        choices=["main", "tfrs", "ablations"],
        nargs="+",
        default=["main", "tfrs", "ablations"],
    )
    parser.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    payload: dict = {
        "configs": {n: benchmark_config(n).to_dict() for n in args.datasets},
        "options": {n: benchmark_options(dataset=n).__dict__ for n in args.datasets},
    }
    parts = {"main": ("comparison", lambda: main_comparison(args.data_dir, args.datasets,
                                                          args.protocols)),
             "tfrs": ("tfrs_80_20", lambda: tfrs_comparison(args.data_dir)),
             "ablations": ("ablations", lambda: ablations(args.data_dir))}  # fmt: skip
    for name in args.only:
        key, run = parts[name]
        payload[key] = run()
    previous = Path(args.output) if args.output else common.RESULTS / "retrieval.json"
    if len(args.only) < len(parts) and previous.exists():
        # A partial run keeps the other parts of the previous results, each with the commit and
        # date it was measured at.
        old = json.loads(previous.read_text())
        kept = {parts[n][0] for n in parts if n not in args.only}
        payload["earlier_parts"] = {
            key: {"commit": old.get("commit"), "date": old.get("date"),
                  **old.get("earlier_parts", {}).get(key, {})}
            for key in kept if key in old
        }  # fmt: skip
        payload |= {key: old[key] for key in kept if key in old}
    payload["wall_seconds"] = round(time.perf_counter() - start, 1)
    payload["peak_rss_mb"] = peak_rss_mb()
    path = common.write_results("retrieval", payload, args.output)
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
