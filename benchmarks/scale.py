"""Cost curves past one machine's comfort: users, items, events (issue: scale).

Parts (``--parts``, default ``curves,epoch,softmax,beam``; the others on request):

``curves``   For 10k / 100k / 1M users (100k items), 10k / 100k / 1M items (100k users) and 1M x 1M,
             each in fresh processes: generate a synthetic world (``towers.synthetic``), train the
             tower streaming from its shards (``nextwatch train-candidates --shards``, sampled
             softmax) for a fixed number of steps, and measure examples/s, the projected epoch
             time (examples per epoch / examples/s), peak RSS, model size on disk, the ScaNN build
             time and p99 latency, and single-process export users/s. The 1M-user world has
             >= 50M events.
``epoch``    One timed full epoch on the 100k x 100k world (checks the projected epochs).
``softmax``  Sampled vs full softmax: the step costs of ``steps``, and temporal-user-20 quality
             on a catalogue where the full softmax still fits.
``steps``    The step cost alone (``benchmarks/step_cost.py``): sampled softmax at 10k / 100k /
             1M / 3M items doing the same work, repeated; with realistic draws; full softmax where
             it fits; and a per-op TF profile of the step at 10k and 1M items.
``hugepages`` The fixed-draw step at 10k / 1M / 3M items with and without transparent huge
             pages for glibc's malloc (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``), interleaved in
             fresh processes, five rounds.
``draws``    The step with popularity-drawn histories at 10k / 100k / 1M / 3M items, and with the
             same 40k items drawn at 100k / 1M / 3M, three interleaved rounds of fresh processes:
             does the step's time follow the catalogue or the batch's distinct rows?
``quality``  The softmax quality alone (``softmax`` without the step costs).
``beam``     The Apache Beam export (DirectRunner, 2 worker processes) of all 1M users of the
             1M-user world, with the model trained on it.

Writes ``benchmarks/results/scale.json`` (parts merge into it) and ``docs/scale.png``.

    python benchmarks/scale.py                       # everything (about an hour on 2 cores)
    python benchmarks/scale.py --parts softmax       # one part
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from common import RESULTS, ROOT, git_commit, json_tail, latency_ms, run_command, write_results
from step_cost import ITEMS_AXIS, draw_costs, hugepage_ab, step_costs

log = logging.getLogger("scale")
USERS_AXIS = (10_000, 100_000, 1_000_000)
TRAIN = ["--epochs", "1", "--batch-size", "1024", "--max-examples-per-user", "50",
         "--softmax", "sampled", "--num-negatives", "1000", "--verbose", "2"]  # fmt: skip


def _run(command: list[str], **kw) -> str:
    log.info("$ %s", " ".join(command))
    return run_command(command, **kw)


def _du_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


def world(work: Path, users: int, items: int) -> tuple[Path, dict]:
    """Generate (or reuse) a world; returns its folder and manifest with generation cost."""
    path = work / f"world-{users}-{items}"
    manifest = path / "_manifest.json"
    if not manifest.exists():
        # 62 draws per user leave ~50 after duplicates: >= 50M events for 1M users.
        start = time.perf_counter()
        out = _run([sys.executable, "-c", (
            "import json,resource,sys;from towers.synthetic import *;"
            f"m=generate(SyntheticConfig(num_users={users},num_items={items},"
            "events_per_user=62,users_per_shard=25000),sys.argv[1]);"
            "m['peak_rss_mb']=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024;"
            "print(json.dumps(m))"), str(path)])  # fmt: skip
        meta = json_tail(out)
        meta["wall_seconds"] = round(time.perf_counter() - start, 1)
        manifest.write_text(json.dumps(meta, indent=2))
    meta = json.loads(manifest.read_text())
    meta["disk_mb"] = _du_mb(path)
    return path, meta


def measure_artefact(artefact: Path, world_path: Path, export_users: int) -> dict:
    """ScaNN build time and p99, model size and export users/s (run in its own process)."""
    import numpy as np
    import pyarrow.parquet as pq

    from export.candidates import export_candidates
    from towers.features import query_inputs
    from towers.index import ItemIndex
    from towers.retrieval import Retriever

    vectors = np.load(artefact / "item_vectors.npy")
    ids = (artefact / "vocab" / "items.txt").read_text().split()
    start = time.perf_counter()
    index = ItemIndex.build(ids, vectors)
    build = time.perf_counter() - start
    retriever = Retriever.from_artefact(artefact)
    users = pq.read_table(sorted((world_path / "users").glob("*.parquet"))[0])
    histories = [[str(i) for i in h] for h in users.column("history").to_pylist()[:1000]]
    queries = retriever.encoder.queries(
        query_inputs([retriever.encoder.known_only(h) for h in histories], max_history=50)
    )
    for q in queries[:50]:
        index.search(q[None, :], 100)
    times = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None, :], 100)
        times.append(time.perf_counter() - t)
    sample = artefact.parent / f"{artefact.name}-export-users.parquet"
    pq.write_table(users.slice(0, export_users) if users.num_rows > export_users else users, sample)
    rows = pq.read_metadata(sample).num_rows
    summary = export_candidates(artefact, artefact.parent / f"{artefact.name}-export", k=100,
                                user_table=sample, shard_size=50_000)  # fmt: skip
    return {
        "ann_build_seconds": round(build, 2),
        "ann_search_k100": latency_ms(times),
        "index_params": index.params.__dict__,
        "model_mb": _du_mb(artefact / "weights"),
        "item_vectors_mb": round((artefact / "item_vectors.npy").stat().st_size / 2**20, 1),
        "artefact_mb": _du_mb(artefact),
        "export_users": rows,
        "export_users_per_second": summary.users_per_second,
    }


def curve_point(work: Path, users: int, items: int, max_steps: int) -> dict:
    path, meta = world(work, users, items)
    artefact = work / f"model-{users}-{items}"
    if not (artefact / "metrics.json").exists():
        from towers.model import TowerConfig
        from towers.stream import scan_shards
        from towers.synthetic import shard_paths

        scan = scan_shards(shard_paths(path), TowerConfig(max_examples_per_user=50))
        steps = min(max_steps, max(1, scan.examples // 1024))
        out = _run([sys.executable, "-m", "serving.cli", "train-candidates", "--shards",
                    str(path), "--output", str(artefact), "--steps-per-epoch", str(steps),
                    *TRAIN])  # fmt: skip
        train = json_tail(out)
        (artefact / "train.json").write_text(json.dumps(train, indent=2))
    train = json.loads((artefact / "train.json").read_text())
    out = _run([sys.executable, __file__, "--measure", str(artefact), str(path)])
    measured = json_tail(out)
    trained = train["steps_per_epoch"] * 1024
    return {
        "users": users, "items": items, "events": meta["events"],
        "generate_seconds": meta["wall_seconds"], "generate_peak_rss_mb": meta["peak_rss_mb"],
        "world_disk_mb": meta["disk_mb"],
        "vocabulary": train["items"],
        "examples_per_epoch": train["examples"], "trained_examples": trained,
        "full_epoch": trained > train["examples"] - 1024,  # (the last partial batch is dropped)
        "examples_per_second": train["examples_per_second"],
        "epoch_seconds": round(train["examples"] / train["examples_per_second"], 1),
        "train_prepare_seconds": train["prepare_seconds"],
        "train_peak_rss_mb": train["peak_rss_mb"], **measured,
    }  # fmt: skip


def part_curves(work: Path, max_steps: int) -> dict:
    # Two axes through 100k x 100k, plus 1M x 1M: a 1M-item catalogue that the log covers
    # (100k users leave 29 % of a 1M catalogue unwatched).
    points = [(u, 100_000) for u in USERS_AXIS] + [(100_000, i) for i in ITEMS_AXIS]
    points.append((1_000_000, 1_000_000))
    results = {}
    for users, items in dict.fromkeys(points):
        point = curve_point(work, users, items, max_steps)
        log.info("%s", point)
        results[f"{users}x{items}"] = point
    return {"points": results}


def quality(work: Path) -> dict:
    """temporal-user-20 on a 20k-user x 5k-item world (a sample of 5k users evaluated): full vs
    sampled softmax, same model and schedule, next to most-popular."""
    import numpy as np
    import pandas as pd

    from towers.model import TowerConfig
    from towers.pipeline import evaluate_tower
    from towers.splits import make_split
    from towers.stream import shards_dataset
    from towers.synthetic import ITEMS_FILE, shard_paths
    from towers.train import TrainOptions, train_tower

    path, meta = world(work, 20_000, 5_000)
    data = shards_dataset(shard_paths(path), pd.read_parquet(path / ITEMS_FILE))
    rng = np.random.default_rng(7)
    sample = set(rng.choice(sorted(data.interactions["user_id"].unique()), 5000, replace=False))
    split = make_split(data.interactions, "temporal-user-20")
    test = split.test[split.test["user_id"].isin(sample)]
    split = type(split)(split.protocol, split.train, test, split.cold_test_dropped)
    train = data.with_interactions(split.train)
    out: dict = {"world": meta, "evaluated_users": len(sample), "runs": {}}
    options = TrainOptions(epochs=2, batch_size=1024, verbose=0)
    for name, config in {
        "full": TowerConfig(softmax="full", max_examples_per_user=30),
        "sampled-1000": TowerConfig(softmax="sampled", num_negatives=1000,
                                    max_examples_per_user=30),
        "sampled-200": TowerConfig(softmax="sampled", num_negatives=200,
                                   max_examples_per_user=30),
    }.items():  # fmt: skip
        result = train_tower(train, config, options)
        metrics = evaluate_tower(result.model, train, split)
        out["runs"][name] = {"fit_seconds": result.metrics["fit_seconds"],
                             "examples_per_second": result.metrics["examples_per_second"],
                             **{k: round(v, 4) for k, v in metrics.items()
                                if isinstance(v, float)}}  # fmt: skip
        log.info("%s %s", name, out["runs"][name])
    # As for the models (towers.evaluate): each user's own training items are left out of
    # their list. (Runs before 2026-11-29 kept them in, which understated this baseline.)
    popular = split.train["item_id"].value_counts().index.tolist()
    seen = split.train.groupby("user_id")["item_id"].agg(set)
    truth = test.groupby("user_id")["item_id"].agg(set)
    recalls = []
    for user, relevant in truth.items():
        mine = seen.get(user, set())
        top = set(itertools.islice((i for i in popular if i not in mine), 100))
        recalls.append(len(relevant & top) / len(relevant))
    out["most_popular_recall@100"] = round(float(np.mean(recalls)), 4)
    full = out["runs"]["full"]
    for run in out["runs"].values():
        run["relative_to_full"] = {
            m: round(run[m] / full[m] - 1, 4) for m in ("recall@100", "ndcg@10") if m in run
        }
    return out


def part_softmax(work: Path) -> dict:
    return {**step_costs(), "quality": quality(work)}


def part_steps(work: Path) -> dict:
    """Only the step costs (``part_softmax`` without the quality runs)."""
    return step_costs()


def part_hugepages(work: Path) -> dict:
    """The step cost with and without huge pages (``step_cost.hugepage_ab``)."""
    return hugepage_ab()


def part_draws(work: Path) -> dict:
    return draw_costs()


def part_quality(work: Path) -> dict:
    """Only the quality runs (``part_softmax`` without the step costs)."""
    return {"quality": quality(work)}


def part_epoch(work: Path) -> dict:
    """One timed full epoch on the 100k x 100k world, to check the curves' projected epochs."""
    path, meta = world(work, 100_000, 100_000)
    artefact = work / "model-100000-100000-epoch"
    out = _run([sys.executable, "-m", "serving.cli", "train-candidates", "--shards", str(path),
                "--output", str(artefact), *TRAIN])  # fmt: skip
    train = json_tail(out)
    return {"users": 100_000, "items": 100_000, "events": meta["events"], **train}


def part_beam(work: Path) -> dict:
    from towers.synthetic import shard_paths

    path, meta = world(work, 1_000_000, 100_000)
    artefact = work / "model-1000000-100000"
    output = work / "beam-export"
    if output.exists():
        import shutil

        shutil.rmtree(output)
    users = str(path / "users" / "*.parquet")
    start = time.perf_counter()
    out = _run([sys.executable, "-m", "serving.cli", "export-candidates", "--engine", "beam",
                "--artefact", str(artefact), "--user-table", users, "--output", str(output),
                "--k", "100"])  # fmt: skip
    summary = json_tail(out)
    summary["wall_seconds_with_startup"] = round(time.perf_counter() - start, 1)
    summary["user_shards"] = len(shard_paths(path, "users"))
    return summary


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = results.get("curves", {}).get("points", {})
    if not points:
        return
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for axis_name, fixed, key in (("users", "items", "users"), ("items", "users", "items")):
        rows = sorted((p for p in points.values() if p[fixed] == 100_000), key=lambda p: p[key])
        x = [p[key] for p in rows]
        label = f"{axis_name} (100k {fixed})"
        axes[0].plot(x, [p["epoch_seconds"] for p in rows], "o-", label=label)
        axes[1].plot(x, [p["train_peak_rss_mb"] for p in rows], "o-", label=label)
        axes[2].plot(x, [p["ann_search_k100"]["p99_ms"] for p in rows], "o-", label=label)
        axes[3].plot(x, [p["export_users_per_second"] for p in rows], "o-", label=label)
    titles = ("epoch time (s)", "training peak RSS (MiB)", "ScaNN p99, k=100 (ms)",
              "export users/s (1 process)")  # fmt: skip
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("count")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle("nextwatch cost curves (synthetic worlds, 2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parts_of(results: dict) -> list[str]:
    names = ("curves", "softmax", "steps", "hugepages", "draws", "quality", "beam", "epoch")
    return [name for name in names if name in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts",
        default="curves,epoch,softmax,beam",
        help="comma-separated: curves, epoch, softmax, steps, hugepages, draws, quality, beam",
    )
    parser.add_argument("--work", default=str(ROOT / "artefacts" / "scale"),
                        help="worlds and models (reused between runs)")  # fmt: skip
    parser.add_argument("--max-steps", type=int, default=600, help="training steps per point")
    parser.add_argument(
        "--output", default=None,
        help="JSON path, parts merge into it (default: benchmarks/results/scale.json; the plot "
        "goes to docs/scale.png, or beside the JSON with --output)",
    )  # fmt: skip
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.measure:
        print(json.dumps(measure_artefact(Path(args.measure[0]), Path(args.measure[1]), 50_000)))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result_path = Path(args.output) if args.output else RESULTS / "scale.json"
    plot_path = result_path.with_suffix(".png") if args.output else ROOT / "docs" / "scale.png"
    results = json.loads(result_path.read_text()) if result_path.exists() else {}
    for name in parts_of(results):  # parts from an earlier run keep that run's commit and date
        results[name].setdefault("commit", results["commit"])
        results[name].setdefault("date", results["date"])
    parts = {"curves": lambda: part_curves(work, args.max_steps),
             "softmax": lambda: part_softmax(work), "steps": lambda: part_steps(work),
             "hugepages": lambda: part_hugepages(work),
             "draws": lambda: part_draws(work),
             "quality": lambda: part_quality(work),
             "beam": lambda: part_beam(work),
             "epoch": lambda: part_epoch(work)}  # fmt: skip
    for name in args.parts.split(","):
        start = time.perf_counter()
        results[name] = {
            **parts[name](),
            "part_seconds": round(time.perf_counter() - start, 1),
            "commit": git_commit(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        keep = {k: v for k, v in results.items() if k in parts}
        write_results("scale", keep, result_path)
        plot(keep, plot_path)
        log.info("%s done", name)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
