"""What routing new users costs a SavedModel: per-call latency, routed and main tower only.

Since 2026-12-02 the retrieval SavedModels and ``two_stage`` route each row as the service does
(:mod:`export.routed`): a history of at most ``NEW_USER_MAX_RATINGS`` distinct known items is
answered by the new-user tower, a longer one by the main tower, in one graph that counts the
known items, splits the batch, runs each side and stitches the answers. This benchmark exports
the model ``nextwatch serve`` serves for ml-latest-small (both towers, both rankers) twice, routed
and with ``new_user_max=None`` (the main tower alone, as before), loads each SavedModel in this
process (``tf.saved_model.load``; the ScaNN model through ``load_scann_model``) and times its
``serving_default`` signature, one thread, after a warm-up, the two exports' calls interleaved:

* ``new-user``: one row, a history of 5 items (the 5 most popular);
* ``established``: one row, a history of 50 items (the 50 most popular);
* ``mixed-64``: 64 rows, alternately one of each (a batch that takes both sides of the graph).

``two_stage`` also gets the ranker's user features (a mean rating of 4, the last rating an hour
ago).

These are the graph's own times in Python; TF Serving adds its request handling (gRPC or REST)
on top, which this machine has no TF Serving binary to measure.

    python benchmarks/savedmodel_latency.py --data-dir ../shared/data   # ~6 min (+ training)

Writes ``benchmarks/results/savedmodel_latency.json``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import latency_ms, serving_artefact, write_results

from export.ranking_savedmodel import export_ranking_savedmodels
from export.savedmodel import export_savedmodels, load_scann_model
from towers._tf import tf
from towers.presets import NEW_USER_MAX_RATINGS

log = logging.getLogger("savedmodel_latency")
MODELS = ("retrieval_brute_force", "retrieval_scann", "two_stage")
BATCH = 64


def requests(artefact: Path) -> dict[str, np.ndarray]:
    """The three request shapes, as the signature's ``history`` string tensors."""
    item_ids = np.array((artefact / "vocab" / "items.txt").read_text().split())
    counts = np.load(artefact / "vocab" / "item_counts.npy")
    popular = item_ids[np.argsort(-counts, kind="stable")]
    new, established = popular[:5], popular[:50]
    mixed = np.full((BATCH, len(established)), "", dtype=object)
    for row in range(BATCH):
        history = new if row % 2 == 0 else established
        mixed[row, : len(history)] = history
    return {
        "new-user": np.array([new], dtype=object),
        "established": np.array([established], dtype=object),
        f"mixed-{BATCH}": mixed,
    }


def _inputs(name: str, history: np.ndarray) -> dict[str, tf.Tensor]:
    inputs = {"history": tf.constant(history.astype(str))}
    if name == "two_stage":  # the ranker's user features: rated 4 on average, an hour ago
        rows = len(history)
        inputs["user_count"] = tf.constant([float(len({h for h in r if h})) for r in history])
        inputs["user_mean"] = tf.constant([4.0] * rows)
        inputs["time_since_last"] = tf.constant([3600.0] * rows)
    return inputs


def time_pair(
    name: str, paths: dict[str, Path], shapes: dict[str, np.ndarray], calls: int
) -> dict[str, dict]:
    """p50 / p99 of ``calls`` calls per request shape for each export of model ``name``, the
    exports' calls interleaved (so that the machine's drift falls on both alike), and which
    tower answered each shape."""
    load = load_scann_model if name == "retrieval_scann" else tf.saved_model.load
    signatures = {
        export: load(str(path)).signatures["serving_default"] for export, path in paths.items()
    }
    out: dict[str, dict] = {export: {} for export in paths}
    for shape, history in shapes.items():
        inputs = _inputs(name, history)
        samples: dict[str, list[float]] = {export: [] for export in paths}
        generators = {}
        for export, signature in signatures.items():
            generator = signature(**inputs).get("generator")
            generators[export] = (
                None if generator is None else sorted({g.decode() for g in generator.numpy()})
            )
            for _ in range(20):
                signature(**inputs)
        for _ in range(calls):
            for export, signature in signatures.items():
                start = time.perf_counter()
                signature(**inputs)
                samples[export].append(time.perf_counter() - start)
        for export in paths:
            out[export][shape] = {
                **latency_ms(samples[export]),
                "rows": len(history),
                "generators": generators[export],
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="MovieLens folder (default: $NEXTWATCH_DATA)")
    parser.add_argument("--artefact", help="artefact directory (default: trained and cached)")
    parser.add_argument("--calls", type=int, default=500, help="timed calls per request shape")
    parser.add_argument("--output", help="JSON path (default: results/savedmodel_latency.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    artefact = serving_artefact(args.artefact, args.data_dir, ranker=True)
    shapes = requests(artefact)
    work = Path(tempfile.mkdtemp(prefix="nextwatch-savedmodel-latency-"))
    results: dict[str, dict] = {}
    try:
        paths: dict[str, dict[str, Path]] = {name: {} for name in MODELS}
        for export, limit in (("routed", NEW_USER_MAX_RATINGS), ("main-only", None)):
            out = work / export
            exported = export_savedmodels(artefact, out, models=MODELS[:2], new_user_max=limit)
            exported |= export_ranking_savedmodels(artefact, out, new_user_max=limit)
            for name in MODELS:
                paths[name][export] = exported[name]
        for name in MODELS:
            for export, timing in time_pair(name, paths[name], shapes, args.calls).items():
                results[f"{name}/{export}"] = timing
                log.info("%s/%s: %s", name, export, timing)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results(
        "savedmodel_latency",
        {"dataset": "ml-latest-small", "new_user_max": NEW_USER_MAX_RATINGS,
         "retrieval_k": 100, "two_stage": {"k": 10, "num_candidates": 100},
         "calls": args.calls, "models": results},
        args.output,
    )  # fmt: skip


if __name__ == "__main__":
    main()
