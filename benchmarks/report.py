"""Render benchmarks/results/retrieval.json as the Markdown tables shown in README.md.

python benchmarks/report.py > /tmp/tables.md
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
        print("| model | top-100 accuracy |\n|---|---|")
        for name, m in data["tfrs_80_20"]["models"].items():
            print(f"| {name} | {m['top100_accuracy']:.4f} |")
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


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS)
