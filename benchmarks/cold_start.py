"""Cold-start benchmark: new users (cold-user-k, onboarding) and new items (cold-item), one run.

Protocols (``../shared/PROTOCOLS.md``) on ml-latest-small and ml-100k, with the benchmark tower:

* cold-user-k, k = 0, 1, 3, 5, 10: Recall@10/50 and NDCG@10 of held-out users given their first k
  items at request time (no retraining), next to most-popular and to warm users (the same model's
  temporal-user-20 test users).
* onboarding: cold users who go down the list of ``GET /v1/onboarding`` and rate what they have
  seen, until they have rated five or have been shown its first n (20, 50, 100 or 300), against
  the same users' first five items, on the same relevant items. The setting is picked on
  validation users, one for both datasets; ``--only onboarding-new-user`` picks it for the
  new-user preset, the tower that answers such users in the service.
* cold-item: the held-out items added from metadata by the content projection, ranked among
  themselves for each user who watched one: AUC and Recall@10, next to random order and to
  most-popular-within-genre; the ridge projection next to one trained on the softmax objective.
  ``--only items-joint`` adds one trained jointly with the tower (``joint_content.py``), its ID
  dropout picked on a second carve of items.

    python benchmarks/cold_start.py --data-dir ../shared/data          # ~11 min on 2 cores
    python benchmarks/cold_start.py --only sweep --output benchmarks/results/cold_start_sweep.json
    python benchmarks/cold_start.py --only age-knots \
        --output benchmarks/results/cold_start_age_knots.json                   # ~40 min
    python benchmarks/cold_start.py --only time-popularity \
        --output benchmarks/results/cold_start_time_popularity.json             # ~4 min
    python benchmarks/cold_start.py --only onboarding-new-user \
        --output benchmarks/results/cold_start_onboarding_new_user.json         # ~10 min
    python benchmarks/cold_start.py --only switch \
        --output benchmarks/results/cold_start_switch.json                      # ~7 min
    python benchmarks/cold_start.py --only items-joint \
        --output benchmarks/results/cold_start_items_joint.json                 # ~22 min

Writes ``benchmarks/results/cold_start.json``.
"""

from __future__ import annotations

import argparse
import logging
import time

import common
from cold_items import cold_items, joint_items
from cold_tuning import age_knot_validation, sweep, switch_point, time_popularity
from cold_users import cold_users, joint_pick, onboarding_new_user

from towers.movielens import load_movielens
from towers.presets import benchmark_options
from towers.train import peak_rss_mb

log = logging.getLogger("benchmarks.cold_start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", default=None, help="MovieLens folder (default: $NEXTWATCH_DATA)"
    )
    parser.add_argument("--datasets", nargs="+", default=["ml-latest-small", "ml-100k"])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[
            "users",
            "items",
            "items-joint",
            "sweep",
            "age-knots",
            "time-popularity",
            "onboarding-new-user",
            "switch",
        ],
        default=["users", "items"],
    )
    parser.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    payload: dict = {
        "options": {n: benchmark_options(dataset=n).__dict__ for n in args.datasets},
        "datasets": {},
    }
    for name in args.datasets:
        data = load_movielens(name, args.data_dir)
        entry = payload["datasets"].setdefault(name, {})
        if "users" in args.only:
            entry["cold_user"] = cold_users(data)
        if "items" in args.only:
            entry["cold_item"] = cold_items(data)
        if "items-joint" in args.only:
            entry["cold_item_joint"] = joint_items(data)
        if "sweep" in args.only:
            entry["sweep"] = sweep(data)
        if "time-popularity" in args.only:
            entry["time_popularity"] = time_popularity(data)
        if "age-knots" in args.only:
            entry["age_knots"] = age_knot_validation(data)
        if "onboarding-new-user" in args.only:
            entry["onboarding_new_user"] = onboarding_new_user(data)
        if "switch" in args.only:
            entry["switch"] = switch_point(data)
        common.write_results("cold_start", payload, args.output)  # partial results survive
    picks = {"cold_user": "onboarding_validation", "onboarding_new_user": "validation"}
    for part, key in picks.items():
        found = {n: e[part][key] for n, e in payload["datasets"].items() if e.get(part)}
        if len(found) > 1:
            payload[f"{part}_onboarding_joint_pick"] = joint_pick(found)
    payload["wall_seconds"] = round(time.perf_counter() - start, 1)
    payload["peak_rss_mb"] = peak_rss_mb()
    log.info("wrote %s", common.write_results("cold_start", payload, args.output))


if __name__ == "__main__":
    main()
