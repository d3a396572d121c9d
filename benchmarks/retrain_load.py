"""Serving latency while the model retrains: ``nextwatch retrain --home`` runs in its own
(lower-priority) process beside a loaded ``nextwatch serve``, and its new version is hot-swapped.

A real ``nextwatch serve --workers 2`` serving its registry (the ml-latest-small benchmark
artefact with its ranker, store seeded with ml-latest-small) is loaded by wrk as in
``http_load.py`` (200 requests/s: 80 % ranked recommendations, 10 % similar items, 10 % rating
writes), in 30 s windows:

1. baseline windows with nothing else running;
2. windows while ``nextwatch retrain --home HOME`` warm-starts the serving version on the store's
   log (the seeded ratings plus the load's writes), retrains the ranker, compares candidate and
   serving version on the most recent events, promotes, and the workers swap it in;
3. one window after the swap.

Reported per window: p50/p99/max latency and failures; the retrain's wall time and exit code;
the model version before and after.

    apt-get install wrk
    python benchmarks/retrain_load.py --data-dir ../shared/data     # ~15 min

Writes ``benchmarks/results/retrain_load.json``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import serving_artefact, write_results
from http_load import run_wrk
from live import start_server

from serving.registry import Registry
from serving.retrain import background_priority
from towers.artefact import fit_content_projection
from towers.movielens import load_movielens

log = logging.getLogger("retrain_load")
WINDOW_S = 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="MovieLens folder (default: $NEXTWATCH_DATA)")
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--baseline-windows", type=int, default=2)
    parser.add_argument("--output", help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    artefact = serving_artefact(None, args.data_dir, ranker=True)
    if not (artefact / "content.npz").exists():
        fit_content_projection(artefact, load_movielens("ml-latest-small", args.data_dir).items)
    with tempfile.TemporaryDirectory(prefix="nextwatch-retrain-load-") as tmp:
        home = Path(tmp) / "home"
        registry = Registry(home / "models")
        staging = registry.staging()
        shutil.copytree(artefact, staging, dirs_exist_ok=True)
        registry.promote(registry.publish(staging).name)
        server = start_server(None, home, data_dir=args.data_dir, workers=2)
        try:
            search = httpx.get(f"{server.url}/v1/items", params={"q": "the", "limit": 100})
            items = [i["item_id"] for i in search.json()]
            run_wrk(server.url, args.rate / 2, 10, items)  # warm-up, not reported
            before = httpx.get(f"{server.url}/v1/model").json()["version"]
            baseline = [run_wrk(server.url, args.rate, WINDOW_S, items)
                        for _ in range(args.baseline_windows)]  # fmt: skip
            log.info("baseline: %s", [(w["p99_ms"], w["failures"]) for w in baseline])
            command = [
                sys.executable, "-m", "serving.cli", "retrain", "--home", str(home),
                "--dataset", "ml-latest-small", "--holdout-fraction", "0.005",
                "--tolerance", "1.0", "--verbose", "0",
            ]  # fmt: skip
            if args.data_dir:
                command += ["--data-dir", args.data_dir]
            started = time.perf_counter()
            with open(home / "retrain.log", "wb") as out:
                retrain = subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT,
                    preexec_fn=background_priority,
                )  # fmt: skip
            during = []
            while retrain.poll() is None:
                during.append(run_wrk(server.url, args.rate, WINDOW_S, items))
                log.info("during retrain: %s", (during[-1]["p99_ms"], during[-1]["failures"]))
            retrain_seconds = time.perf_counter() - started
            time.sleep(3)  # the workers follow the pointer within a second; swap
            after_window = run_wrk(server.url, args.rate, WINDOW_S, items)
            after = httpx.get(f"{server.url}/v1/model").json()["version"]
        finally:
            server.stop()
        tail = (home / "retrain.log").read_text()[-3000:]
    payload = {
        "rate": args.rate,
        "window_seconds": WINDOW_S,
        "baseline": baseline,
        "during_retrain": during,
        "after_swap": after_window,
        "retrain_seconds": round(retrain_seconds, 1),
        "retrain_exit_code": retrain.returncode,
        "version_before": before,
        "version_after": after,
        "failures": sum(w["failures"] for w in [*baseline, *during, after_window]),
        "retrain_log_tail": tail,
    }
    log.info("wrote %s", write_results("retrain_load", payload, args.output))


if __name__ == "__main__":
    main()
