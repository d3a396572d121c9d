"""Protocol api-latency: the Python API, one user per call, k = 10.

Loads the benchmark artefact for ml-latest-small and its ranker (trained once and cached) in
``serving.api.Recommender`` and times, after 200 warm-up calls:

* ``known-user-ranked``: ``recommend(user_id, k=10)``, the protocol's call: retrieve 100
  candidates, rescore them with the ranker, return 10;
* ``known-user``: the same with ``rank=False`` (retrieval only), cycling over all 610 users
  (stored history, seen items excluded);
* ``anonymous``: ``recommend(history=..., k=10)`` with each user's last 20 watches;
* ``genre-filter``: known users with ``genres=["Documentary"]`` (a rare genre, 4.5 % of the
  items, which the retriever scores exactly over its own items);
* ``similar-items``: ``similar_items(item_id, k=10)``.

Each: 2,000 calls, one thread, p50/p99. Targets: retrieval p50 <= 1 ms and p99 <= 3 ms; with
ranking p50 <= 1.5 ms and p99 <= 5 ms.

    python benchmarks/api_latency.py        # ~1 min after the artefact exists
"""

from __future__ import annotations

import argparse
import logging
import time

from common import latency_ms, serving_artefact, write_results

from serving.api import Recommender

log = logging.getLogger("api_latency")


def timed(call, arguments: list, calls: int, warmup: int = 200) -> dict:
    for n in range(warmup):
        call(arguments[n % len(arguments)])
    times = []
    for n in range(calls):
        argument = arguments[n % len(arguments)]
        start = time.perf_counter()
        call(argument)
        times.append(time.perf_counter() - start)
    return latency_ms(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="MovieLens folder (default: $NEXTWATCH_DATA)")
    parser.add_argument("--artefact", help="artefact directory (default: trained and cached)")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--output", help="JSON path (default: benchmarks/results/api_latency.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    start = time.perf_counter()
    rec = Recommender.load(serving_artefact(args.artefact, args.data_dir, ranker=True))
    load_seconds = time.perf_counter() - start
    users = rec.users.user_ids
    histories = rec.users.histories(rec.users.rows(users))
    items = rec.retriever.index.item_ids[:1000]
    cases = {
        "known-user-ranked": timed(lambda u: rec.recommend(u, k=10), users, args.calls),
        "known-user": timed(lambda u: rec.recommend(u, k=10, rank=False), users, args.calls),
        "anonymous": timed(
            lambda h: rec.recommend(history=h[-20:], k=10, rank=False), histories, args.calls
        ),
        "genre-filter": timed(
            lambda u: rec.recommend(u, k=10, genres=["Documentary"], rank=False), users, args.calls
        ),
        "similar-items": timed(lambda i: rec.similar_items(i, k=10), items, args.calls),
    }
    for name, result in cases.items():
        log.info("%s: %s", name, result)
    write_results(
        "api_latency",
        {
            "protocol": "api-latency",
            "stage": "known-user-ranked: retrieve 100, rank, return 10; the rest retrieval only",
            "dataset": "ml-latest-small",
            "k": 10,
            "model": rec.describe(),
            "load_seconds": round(load_seconds, 2),
            "cases": cases,
            "targets": {
                "retrieval": {"p50_ms": 1.0, "p99_ms": 3.0},
                "ranked": {"p50_ms": 1.5, "p99_ms": 5.0},
            },
        },
        args.output,
    )


if __name__ == "__main__":
    main()
