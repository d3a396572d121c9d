"""Why nextwatch asked once per user trails on tfrs-80-20: the share of seen items in each
unfiltered top-100, and what top-100 accuracy would be with seen items filtered (a diagnostic,
not the protocol's number; ``benchmarks/retrieval.py`` also asks once per test row). Also which
part of a per-row query carries its accuracy: the history before the row, or the row's time.

    python benchmarks/tfrs_diagnostic.py --data-dir ../shared/data

Writes ``benchmarks/results/tfrs_diagnostic.json``.
"""

from __future__ import annotations

import argparse

import baselines as bl
import common
import numpy as np

from towers.evaluate import HistoryIndex, TowerScorer, evaluate_top_k_accuracy_at_events
from towers.examples import example_age
from towers.metrics import top_k
from towers.movielens import load_movielens
from towers.presets import benchmark_config, benchmark_options
from towers.splits import make_split
from towers.train import train_tower


def per_row_parts(scorer: TowerScorer, split) -> dict:
    """Top-100 accuracy of per-row queries with each part swapped for the per-user one: the
    history (before the row, or the user's last training rows) and the example age (at the row's
    time, or at the user's last training row)."""
    model, before = scorer.model, HistoryIndex(split.train)
    size = model.config.max_history

    def asked(history: str, age: str):
        def score(users, times):
            if history == "before the row":
                bags = before.before(users, times, size)
            else:
                bags = [scorer.histories.get(str(u), []) for u in users]
            if age == "at the row":
                ages = np.maximum(example_age(np.asarray(times, np.float64), model.time_window), 0)
            else:
                ages = np.array([scorer.query_age.get(str(u), 0.0) for u in users], np.float32)
            return scorer.scores_for(bags, users, ages)

        return score

    return {
        f"history {h}, age {a}": round(
            evaluate_top_k_accuracy_at_events(asked(h, a), scorer.item_ids, split, 100), 4
        )
        for h in ("before the row", "of the user's last training rows")
        for a in ("at the row", "at the user's last training row")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args()
    data = load_movielens("ml-100k", args.data_dir)
    split = make_split(data.interactions, "tfrs-80-20")
    train = data.with_interactions(split.train)
    options = benchmark_options(0, dataset=data.name)
    scorer = TowerScorer(train_tower(train, benchmark_config(data.name), options).model, train)
    items = scorer.item_ids
    index = {i: n for n, i in enumerate(items)}
    users = sorted(split.test["user_id"].unique())
    seen = {u: set(g.map(index)) for u, g in split.train.groupby("user_id")["item_id"]}
    test = split.test[split.test["item_id"].isin(index)]
    out = {}
    # EASE's λ is tuned on validation exactly as in benchmarks/retrieval.py.
    ease_params, _ = bl.tune(split, bl.ease, bl.EASE_GRID)
    out["ease_params"] = ease_params
    for name, score in (
        ("nextwatch", scorer),
        ("ease", bl.ease(split.train, items, **ease_params)),
    ):
        scores = np.array(score(users), dtype=np.float64)
        ranked = top_k(scores.copy(), 100)
        share = np.mean(
            [
                len(set(r.tolist()) & seen.get(u, set())) / 100
                for u, r in zip(users, ranked, strict=True)
            ]
        )
        exclude = [np.array(sorted(seen.get(u, set())), dtype=np.int64) for u in users]
        filtered = dict(zip(users, top_k(scores.copy(), 100, exclude), strict=True))
        hits = sum(
            index[i] in set(filtered[u].tolist())
            for u, i in zip(test["user_id"], test["item_id"], strict=True)
        )
        out[name] = {
            "seen_share_of_unfiltered_top100": round(float(share), 4),
            "top100_accuracy_seen_filtered": round(hits / len(split.test), 4),
        }
    out["per_row_queries"] = per_row_parts(scorer, split)
    payload = {"protocol": "tfrs-80-20", "models": out}
    common.write_results("tfrs_diagnostic", payload, args.output)
    print(out)


if __name__ == "__main__":
    main()
