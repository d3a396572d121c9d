"""Batch candidate export throughput (retrieval only), in users per second on this machine.

1. ml-latest-small: all 610 users of the benchmark artefact, k = 100.
2. A synthetic population of 1,000,000 users on the same catalogue: history lengths drawn from a
   log-normal (median 20, capped at 500) and items drawn by their training popularity, written
   as a Parquet user table. Exported with k = 100, seen items excluded, 50,000-user shards,
   with 1 and with 2 worker processes.

Wall time covers everything after the call starts: loading the artefact in each worker,
encoding, searching, excluding seen items and writing Parquet. Target: >= 5,000 users/s.

    python benchmarks/export_throughput.py                 # ~10 min on 2 cores
    python benchmarks/export_throughput.py --users 100000  # quicker
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import serving_artefact, write_results

from export.candidates import export_candidates

log = logging.getLogger("export_throughput")


def synthetic_user_table(artefact: Path, users: int, path: Path, seed: int = 0) -> dict:
    """Write a user table of ``users`` synthetic users; returns its statistics."""
    rng = np.random.default_rng(seed)
    item_ids = np.array((artefact / "vocab" / "items.txt").read_text().split())
    popularity = np.load(artefact / "vocab" / "item_counts.npy").astype(np.float64)
    lengths = np.minimum(np.maximum(rng.lognormal(np.log(20), 1.0, users).astype(int), 1), 500)
    flat = rng.choice(len(item_ids), size=int(lengths.sum()), p=popularity / popularity.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = pa.array(item_ids[flat], type=pa.large_string())
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    history = pa.LargeListArray.from_arrays(pa.array(offsets), values)
    table = pa.table({"user_id": pa.array([f"s{u}" for u in range(users)]), "history": history})
    pq.write_table(table, path)
    return {
        "users": users,
        "events": int(lengths.sum()),
        "history_median": float(np.median(lengths)),
        "history_mean": round(float(lengths.mean()), 1),
        "history_max": int(lengths.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="MovieLens folder (default: $NEXTWATCH_DATA)")
    parser.add_argument("--artefact", help="artefact directory (default: trained and cached)")
    parser.add_argument("--users", type=int, default=1_000_000, help="synthetic population")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--output", help="JSON path (default: results/export_throughput.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    artefact = serving_artefact(args.artefact, args.data_dir)
    work = Path(tempfile.mkdtemp(prefix="nextwatch-export-"))
    runs = []
    try:
        summary = export_candidates(artefact, work / "ml", k=args.k)
        runs.append({"population": "ml-latest-small", "workers": 1, **asdict(summary)})
        start = time.perf_counter()
        table = work / "synthetic_users.parquet"
        population = synthetic_user_table(artefact, args.users, table)
        population["generate_seconds"] = round(time.perf_counter() - start, 1)
        log.info("synthetic population: %s", population)
        for workers in args.workers:
            out = work / f"synthetic-{workers}"
            summary = export_candidates(
                artefact, out, k=args.k, user_table=table, shard_size=50_000, workers=workers
            )
            rows = pq.ParquetDataset(sorted(out.glob("part-*.parquet"))).read(
                columns=["rank"]
            ).num_rows  # fmt: skip
            runs.append(
                {"population": f"synthetic-{args.users}", "workers": workers, "rows": rows,
                 "output_mb": round(sum(p.stat().st_size for p in out.glob("part-*")) / 2**20, 1),
                 **asdict(summary)}
            )  # fmt: skip
            log.info("%s", runs[-1])
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for run in runs:
        run.pop("output")
    write_results(
        "export_throughput",
        {"k": args.k, "synthetic_population": population, "runs": runs,
         "target_users_per_second": 5000},
        args.output,
    )  # fmt: skip


if __name__ == "__main__":
    main()
