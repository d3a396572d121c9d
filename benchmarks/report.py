"""Render benchmark JSON as the Markdown tables shown in README.md.

python benchmarks/report.py > /tmp/tables.md            # retrieval quality (retrieval.json)
python benchmarks/report.py serving > /tmp/serving.md   # ann, api_latency, export_throughput
python benchmarks/report.py ranking                      # ranking.json
python benchmarks/report.py scale                        # scale.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "retrieval.json"
METRICS = ("recall@10", "recall@50", "recall@100", "recall@300", "ndcg@10", "hr@10")


def _row(name: str, m: dict, best: dict) -> str:
    cells = []
    for k in METRICS:
        v = f"{m[k]:.4f}"
        cells.append(f"**{v}**" if m[k] >= best[k] else v)
    return f"| {name} | " + " | ".join(cells) + f" | {m.get('train_seconds', '')} |"


def main(path: Path = RESULTS) -> None:
    data = json.loads(path.read_text())
    mach = data["machine"]
    print(
        f"Measured {data['date'][:10]} at commit `{data['commit'][:12]}` on {mach['cpu']}, "
        f"{mach['cores']} cores, {mach['memory_gb']} GB (TensorFlow {mach['tensorflow']}).\n"
    )
    for part, when in data.get("earlier_parts", {}).items():
        date, commit = when["date"][:10], when["commit"][:12]
        print(f"Part `{part}` from an earlier run: {date}, commit `{commit}`.\n")
    for block in data.get("comparison", []):
        models = block["models"]
        best = {k: max(m[k] for m in models.values()) for k in METRICS}
        print(
            f"**{block['dataset']}, {block['protocol']}** "
            f"({int(models['nextwatch']['users'])} test users)\n"
        )
        print("| model | " + " | ".join(METRICS) + " | train s |")
        print("|---" * (len(METRICS) + 2) + "|")
        for name, m in models.items():
            print(_row(name, m, best))
        print()
    if "tfrs_80_20" in data:
        print("**ml-100k, tfrs-80-20** (top-100 accuracy, seen items not filtered)\n")
        print("| model | one query per user | one query per test row, at its time |\n|---|---|---|")
        for name, m in data["tfrs_80_20"]["models"].items():
            at = m.get("top100_accuracy_at_event")
            at = f"{at:.4f}" if at is not None else "not asked per row"
            print(f"| {name} | {m['top100_accuracy']:.4f} | {at} |")
        print()
    if "ablations" in data:
        ab = data["ablations"]
        print("**Ablation: depth** (ml-latest-small, temporal-user-20)\n")
        print("| depth | recall@100 | ndcg@10 | train s |\n|---|---|---|---|")
        for d, m in ab["depth"]["results"].items():
            print(f"| {d} | {m['recall@100']:.4f} | {m['ndcg@10']:.4f} | {m['train_seconds']} |")
        print()
        for ds, rows in ab["features"].items():
            print(f"**Ablation: features** ({ds}, temporal-user-20)\n")
            print("| features | recall@100 | ndcg@10 |\n|---|---|---|")
            for name, m in rows.items():
                print(f"| {name} | {m['recall@100']:.4f} | {m['ndcg@10']:.4f} |")
            print()


def _machine_line(data: dict) -> str:
    mach = data["machine"]
    return (
        f"{data['date'][:10]}, commit `{data['commit'][:12]}`, {mach['cpu']}, {mach['cores']} cores"
    )


def _part_line(data: dict, part: str) -> str:
    """:func:`_machine_line`, with the date and commit of an earlier run that measured ``part``."""
    return _machine_line({**data, **data.get("earlier_parts", {}).get(part, {})})


def serving() -> None:
    """Tables for ann.json, api_latency.json and export_throughput.json."""
    folder = RESULTS.parent
    ann = json.loads((folder / "ann.json").read_text())
    print(f"**ann-recall** (k = 100, {ann['queries']} real user queries; {_machine_line(ann)})\n")
    print(
        "| catalogue | index | recall@100 | p50 ms | p99 ms | build s |\n|---|---|---|---|---|---|"
    )
    for r in ann["results"]:
        idx = r["index"]
        name = idx["mode"]
        if name == "tree_ah":
            name += f" ({idx['num_leaves']} leaves, search {idx['leaves_to_search']}, " + (
                f"reorder {idx['reorder']})"
            )
        print(
            f"| {r['catalogue']} ({r['items']:,} x {r['dim']}) | {name} | {r['recall_at_100']:.4f}"
            f" | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['build_seconds']} |"
        )
    api = json.loads((folder / "api_latency.json").read_text())
    print(
        "\n**api-latency** (k = 10; `known-user-ranked` ranks 100 candidates, the other calls "
        f"are retrieval only; {_machine_line(api)})\n"
    )
    print("| call | p50 ms | p99 ms | calls |\n|---|---|---|---|")
    for name, r in api["cases"].items():
        print(f"| {name} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['calls']} |")
    export = json.loads((folder / "export_throughput.json").read_text())
    print(f"\n**batch export** (k = {export['k']}; {_machine_line(export)})\n")
    print("| population | workers | users | rows | seconds | users/s |\n|---|---|---|---|---|---|")
    for r in export["runs"]:
        rows = r.get("rows", r["users"] * export["k"])
        print(
            f"| {r['population']} | {r['workers']} | {r['users']:,} | {rows:,} | {r['seconds']}"
            f" | {r['users_per_second']:,.0f} |"
        )


def ranking() -> None:
    """Tables for ranking.json."""
    data = json.loads((RESULTS.parent / "ranking.json").read_text())
    print(f"**two-stage, temporal-user-20** (100 candidates; {_part_line(data, 'two_stage')})\n")
    print("| dataset | order | NDCG@10 (gain = rating) | weighted pairwise loss | label horizon, "
          "tower-score weight (validation gain; at 1, 0) |\n|---|---|---|---|---|")  # fmt: skip
    for r in data["two_stage"]:
        h, w = r.get("label_horizon", 1), r.get("tower_score_weight", 0.0)
        settings = f"{h}, {w:g}"
        gains = (r.get("serving_validation") or {}).get(
            "validation_ndcg_gain_by_horizon_and_weight"
        )
        if gains:
            paper = gains.get("1", {}).get("0.0")
            settings += f" ({gains[str(h)][str(float(w))]:+.1%}" + (
                f"; {paper:+.1%})" if paper is not None else ")"
            )
        for order in ("candidate_order", "ranked_order"):
            m = r[order]
            print(f"| {r['dataset']} | {order.split('_')[0]} | {m['ndcg@10']:.4f} | "
                  f"{m['weighted_pairwise_loss']:.4f} | "
                  f"{settings if order == 'ranked_order' else ''} |")  # fmt: skip
    small = data["ratings"]["ml-latest-small random-80-20"]
    folds = data["ratings"]["ml-100k folds"]
    print(f"\n**rating error** ({_part_line(data, 'ratings')})\n")
    print("| protocol | metric | rating preset | served ranker's default | EmbeddingDotBias |")
    print("|---|---|---|---|---|")
    rows = [
        ("ml-latest-small random-80-20", "MSE", small["ranker_mse"],
         small.get("ranker_default_mse"), small["edb_mse"]),
        ("ml-100k folds u1-u5", "mean RMSE", folds["ranker_rmse"],
         folds.get("ranker_default_rmse"), folds["edb_rmse"]),
    ]  # fmt: skip
    for protocol, metric, ranker, default, edb in rows:
        shown = "not measured" if default is None else f"{default:.4f}"
        print(f"| {protocol} | {metric} | {ranker:.4f} | {shown} | {edb:.4f} |")


def _count(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


def scale() -> None:
    """Tables for scale.json: cost curves, sampled vs full softmax, Beam export."""
    data = json.loads((RESULTS.parent / "scale.json").read_text())
    curves = data["curves"]
    print(f"Cost curves: {curves['date'][:10]}, commit `{curves['commit'][:12]}`\n")
    print(
        "| users × items | events | vocabulary | examples/s | epoch (s) | training peak RSS "
        "| weights on disk | ScaNN build | ScaNN p99 (k=100) | export users/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in curves["points"].values():
        epoch = f"{p['epoch_seconds']:,.0f}" + ("" if p["full_epoch"] else " (projected)")
        print(
            f"| {_count(p['users'])} × {_count(p['items'])} | {p['events'] / 1e6:.1f}M "
            f"| {p['vocabulary']:,} | {p['examples_per_second']:,.0f} | {epoch} "
            f"| {p['train_peak_rss_mb'] / 1024:.1f} GB | {p['model_mb']:,.0f} MB "
            f"| {p['ann_build_seconds']:.1f} s | {p['ann_search_k100']['p99_ms']:.2f} ms "
            f"| {p['export_users_per_second']:,.0f} |"
        )
    epoch = data.get("epoch")
    if epoch:
        point = curves["points"].get("100000x100000")
        projected = f" (projected from 600 steps: {point['epoch_seconds']:,.0f} s)" if point else ""
        print(
            f"\nTimed full epoch, 100k × 100k: {epoch['fit_seconds']:,.0f} s, "
            f"{epoch['examples_per_second']:,.0f} examples/s{projected}"
        )
    soft = data["softmax"]
    steps = data.get("steps", soft)  # the step-cost-only part, when it was run after softmax
    print(f"\nStep cost: {steps['date'][:10]}, commit `{steps['commit'][:12]}` (ms per step; "
          "distinct items per batch in brackets)\n")  # fmt: skip
    print(
        "| items | sampled, the same 10k items drawn | sampled, uniform histories "
        "| sampled, popularity-drawn histories | full, uniform histories |\n|---|---|---|---|---|"
    )
    cost = {(c["items"], c["softmax"], c.get("histories", "uniform")): c
            for c in steps["step_cost"]}  # fmt: skip

    def cell(key: tuple) -> str:
        if key not in cost:
            return "not run"
        rows = cost[key].get("distinct_rows")
        runs = cost[key].get("runs_ms")
        spread = f", runs {min(runs):.1f}–{max(runs):.1f}" if runs and len(runs) > 1 else ""
        return f"{cost[key]['ms_per_step']:.1f} ms" + (f" ({rows:,}{spread})" if rows else "")

    for items in sorted({c["items"] for c in steps["step_cost"]}):
        print(
            f"| {items:,} | {cell((items, 'sampled', 'fixed'))} "
            f"| {cell((items, 'sampled', 'uniform'))} | {cell((items, 'sampled', 'popular'))} "
            f"| {cell((items, 'full', 'uniform'))} |"
        )
    profiles = steps.get("profile")
    if profiles:
        head = " | ".join(f"{p['items']:,} items" for p in profiles)
        print(f"\nWhere a step's time goes (same 10k items drawn; ms per step)\n\n| | {head} |")
        print("|---|" + "---|" * len(profiles))
        print("| wall (median) | " + " | ".join(f"{p['wall_ms']:.1f}" for p in profiles) + " |")
        print("| op self time, both cores | "
              + " | ".join(f"{p['busy_ms']:.1f}" for p in profiles) + " |")  # fmt: skip
        for group in profiles[0]["groups"]:
            cells = " | ".join(f"{p['groups'][group]:.1f}" for p in profiles)
            print(f"| {group} | {cells} |")
    quality = data.get("quality", soft)  # the quality-only part, when it was run after softmax
    print(f"\nSoftmax quality: {quality['date'][:10]}, commit `{quality['commit'][:12]}`")
    q = quality["quality"]
    print("\n| softmax | Recall@100 | NDCG@10 | vs full (R@100, NDCG@10) | examples/s |")
    print("|---|---|---|---|---|")
    for name, run in q["runs"].items():
        rel = run["relative_to_full"]
        print(
            f"| {name} | {run['recall@100']:.4f} | {run['ndcg@10']:.4f} "
            f"| {rel['recall@100']:+.1%}, {rel['ndcg@10']:+.1%} "
            f"| {run['examples_per_second']:,.0f} |"
        )
    print(f"| most popular | {q['most_popular_recall@100']:.4f} | | | |")
    beam = data.get("beam")
    if beam:
        print(
            f"\nBeam: {beam['users']:,} users in {beam['seconds']:.0f} s, "
            f"{beam['users_per_second']:,.0f} users/s ({beam['runner']}, commit "
            f"`{beam['commit'][:12]}`)"
        )


if __name__ == "__main__":
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(__doc__)
        raise SystemExit(0)
    if sys.argv[1:] == ["serving"]:
        serving()
    elif sys.argv[1:] == ["scale"]:
        scale()
    elif sys.argv[1:] == ["ranking"]:
        ranking()
    else:
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS)
