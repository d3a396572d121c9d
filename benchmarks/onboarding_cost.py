"""What ``GET /v1/onboarding`` costs the service: picking the list, and the size of the answer.

``serving.served.Served.onboarding`` picks the list with a greedy pass over the 300 most popular
trained items (``towers.coldstart.onboarding_order``), under the service's compute lock, so no
recommendation is computed while it runs. The default list is picked while a model warms (at
start and before a hot swap); any other diversity (rounded to two decimals) is picked on its
first request and then cached for the model. This benchmark loads the model
``nextwatch serve`` serves for ml-latest-small (both towers: the list spreads over the new-user
tower's item space) and measures, on one thread:

* ``pick``: an uncached pick of the whole 300-item list, for each diversity of the validated
  grid and the default (the time a request holds the compute lock on a cache miss);
* ``cached``: the default call once the list is cached, with the catalogue lookups that the
  endpoint makes for each item (``n`` = 20 and 300);
* ``response_bytes``: the JSON body of ``GET /v1/onboarding`` as the endpoint's response model
  serialises it, for ``n`` = 12 (one page), 20, 50, 100 and 300, plain and gzip-compressed at
  the service's level; ``sent_gzip`` says whether the service compresses it (answers of at least
  ``serving.http.GZIP_MIN_BYTES``, to a client that accepts gzip).

    python benchmarks/onboarding_cost.py --data-dir ../shared/data   # seconds (+5 min to train)

Writes ``benchmarks/results/onboarding_cost.json``.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import time

from common import latency_ms, serving_artefact, write_results

from serving.http import GZIP_LEVEL, GZIP_MIN_BYTES
from serving.schemas import OnboardingOut
from serving.served import (
    ONBOARDING_DIVERSITY_NEW_USER,
    ONBOARDING_LENGTH_NEW_USER,
    ONBOARDING_MAX,
    Served,
)

log = logging.getLogger("onboarding_cost")
DIVERSITIES = (0.0, 0.3, 0.5, 0.7, 0.9)
SIZES = (12, 20, 50, 100, 300)


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def uncached_pick(served: Served, diversity: float, calls: int) -> dict:
    """p50 / p99 of a pick of the whole list at ``diversity`` with the cache emptied first."""
    times = []
    for _ in range(calls):
        served.__dict__.pop("_onboarding", None)
        times.append(_timed(lambda: served.onboarding(ONBOARDING_MAX, diversity)))
    return latency_ms(times)


def endpoint_body(served: Served, n: int) -> bytes:
    """The endpoint's JSON body for ``n`` items at the default diversity."""
    ids = served.onboarding(n)
    payload = {"model_version": served.version, "items": [served.catalogue.get(i) for i in ids]}
    return OnboardingOut.model_validate(payload).model_dump_json().encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="MovieLens folder (default: $NEXTWATCH_DATA)")
    parser.add_argument("--artefact", help="artefact directory (default: trained and cached)")
    parser.add_argument("--picks", type=int, default=50, help="uncached picks per diversity")
    parser.add_argument("--calls", type=int, default=2000, help="cached calls per size")
    parser.add_argument("--output", help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    served = Served.load(serving_artefact(args.artefact, args.data_dir))
    if served.recommender.new_user is None:
        raise RuntimeError("the artefact has no new-user tower; nextwatch serve trains one")
    pick = {f"diversity-{d}": uncached_pick(served, d, args.picks) for d in DIVERSITIES}
    served.__dict__.pop("_onboarding", None)
    served.onboarding()  # the default list, as warming picks it
    cached = {
        f"n-{n}": latency_ms(
            [_timed(lambda n=n: endpoint_body(served, n)) for _ in range(args.calls)]
        )
        for n in (20, 300)
    }
    sizes = {}
    for n in SIZES:
        body = endpoint_body(served, n)
        sizes[f"n-{n}"] = {
            "bytes": len(body),
            "gzip_bytes": len(gzip.compress(body, GZIP_LEVEL)),
            "sent_gzip": len(body) >= GZIP_MIN_BYTES,
        }
    for name, part in (("pick", pick), ("cached", cached), ("response_bytes", sizes)):
        log.info("%s: %s", name, part)
    write_results(
        "onboarding_cost",
        {
            "dataset": "ml-latest-small",
            "model": served.recommender.describe(),
            "pool": ONBOARDING_MAX,
            "default": {
                "n": ONBOARDING_LENGTH_NEW_USER,
                "diversity": ONBOARDING_DIVERSITY_NEW_USER,
            },
            "pick": pick,
            "cached": cached,
            "response_bytes": sizes,
        },
        args.output,
    )


if __name__ == "__main__":
    main()
