"""Batch candidate export with Apache Beam vs the single-process exporter, in users per second.

The same users (a Parquet user table, its first ``--limit`` rows, or a synthetic population drawn
as in ``export_throughput.py``) are exported with k = 100 and seen items excluded:

1. ``beam``: :func:`export.beam.beam_export` on the DirectRunner, ``multi_processing`` with
   ``--workers`` worker processes (default 2, one per core of the reference machine).
2. ``single-process``: :func:`export.candidates.export_candidates` with one worker.
3. ``process-pool``: the same exporter with ``--workers`` processes, the fair parallel baseline.

Wall time covers everything after the call starts (starting workers, loading the artefact in
each, encoding, searching, writing Parquet). The rows of each run are checked against the
single-process rows (user, rank, item exactly; scores to 1e-4) up to 200,000 users, and by row
count above that.

    python benchmarks/beam_export.py --artefact artefacts/bench-ml-latest-small --limit 2000
    python benchmarks/beam_export.py --synthetic 1000000      # the 1M-user protocol
"""

from __future__ import annotations

import argparse
import glob
import logging
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from common import serving_artefact, write_results
from export_throughput import synthetic_user_table

from export.beam import beam_export
from export.candidates import export_candidates

log = logging.getLogger("beam_export")
COMPARE_MAX_USERS = 200_000


def _rows(directory: Path) -> pd.DataFrame:
    frame = pd.read_parquet(sorted(directory.glob("part-*.parquet")))
    return frame.sort_values(["user_id", "rank"], ignore_index=True)


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    keys = ["user_id", "rank", "item_id"]
    return len(a) == len(b) and bool(
        (a[keys].to_numpy() == b[keys].to_numpy()).all()
        and np.allclose(a["score"], b["score"], atol=1e-4)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="MovieLens folder (default: $NEXTWATCH_DATA)")
    parser.add_argument("--artefact", help="artefact directory (default: trained and cached)")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--users", help="Parquet user table or glob (default: the artefact's)")
    who.add_argument("--synthetic", type=int, help="a synthetic population of this many users")
    parser.add_argument("--limit", type=int, help="only the first N users")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2, help="Beam workers and pool processes")
    parser.add_argument("--output", help="JSON path (default: results/beam_export.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    artefact = serving_artefact(args.artefact, args.data_dir)
    work = Path(tempfile.mkdtemp(prefix="nextwatch-beam-"))
    table = work / "users.parquet"
    try:
        if args.synthetic:
            population = synthetic_user_table(artefact, args.synthetic, table)
            source = f"synthetic-{args.synthetic}"
        else:
            source = args.users or str(artefact / "users.parquet")
            files = sorted(glob.glob(source)) or [source]  # one file, or shards of one table
            users = pa.concat_tables(pq.read_table(f) for f in files)
            users = users.slice(0, args.limit) if args.limit else users
            pq.write_table(users, table)
            population = {"users": users.num_rows}
        log.info("users: %s", population)
        runs = []
        summary = export_candidates(
            artefact, work / "single", k=args.k, user_table=table, shard_size=50_000,
            batch_size=args.batch_size,
        )  # fmt: skip
        runs.append({"engine": "single-process", "workers": 1, **asdict(summary)})
        summary = export_candidates(
            artefact, work / "pool", k=args.k, user_table=table, shard_size=50_000,
            batch_size=args.batch_size, workers=args.workers,
        )  # fmt: skip
        runs.append({"engine": "process-pool", "workers": args.workers, **asdict(summary)})
        beam_args = ["--runner=DirectRunner", f"--direct_num_workers={args.workers}",
                     "--direct_running_mode=multi_processing"]  # fmt: skip
        summary = beam_export(
            artefact, table, work / "beam", k=args.k, batch_size=args.batch_size,
            pipeline_args=beam_args,
        )  # fmt: skip
        runs.append({"engine": "beam", "workers": args.workers, "pipeline_args": beam_args,
                     **asdict(summary)})  # fmt: skip
        compare = population["users"] <= COMPARE_MAX_USERS
        reference = _rows(work / "single") if compare else None
        for run, name in zip(runs, ("single", "pool", "beam"), strict=True):
            run.pop("output")
            files = sorted((work / name).glob("part-*.parquet"))
            run["rows"] = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
            run["output_mb"] = round(sum(f.stat().st_size for f in files) / 2**20, 1)
            if compare:
                run["rows_equal_single_process"] = _same_rows(_rows(work / name), reference)
            log.info("%s", run)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_results(
        "beam_export",
        {"k": args.k, "batch_size": args.batch_size, "users_source": source,
         "limit": args.limit, "population": population, "runs": runs},
        args.output,
    )  # fmt: skip
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
