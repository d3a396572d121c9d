"""Protocol event-to-change: how soon an acknowledged event shows in the user's next
recommendations, and how often one event changes the top 10.

A real ``nextwatch serve`` (benchmark artefact with its ranker, store seeded with
ml-latest-small) runs as its own process. For each of N events, over HTTP on loopback:

1. ``GET /v1/users/{u}/recommendations?k=50`` (the top 10 before; candidates to rate);
2. ``POST /v1/events``: user ``u`` rates one of the items at ranks 11..50 (an item the system
   offered, but not in the top 10, so that the change is not just the rated item leaving);
   the clock starts when the 201 (the acknowledgement) arrives;
3. ``GET /v1/users/{u}/recommendations?k=10``: the clock stops when it returns. It *reflects*
   the event when its ``events`` count is one higher than before and the rated item is gone.

Reported: p50/p99 of ack -> reflecting response (target p99 <= 50 ms), the share of responses
that reflect the event (must be 1), and the share of events that change the top 10 (as a set,
and in order). Users are drawn at random (seeded); ratings are drawn from 0.5..5.

    python benchmarks/event_to_change.py                      # SQLite (the default store)
    python benchmarks/event_to_change.py --store postgresql://...
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from pathlib import Path

import httpx
from common import latency_ms, serving_artefact, write_results
from live import API_KEY, start_server

log = logging.getLogger("event_to_change")


def measure(url: str, events: int, seed: int) -> dict:
    rng = random.Random(seed)
    lags, rounds, reflected, changed_set, changed_order = [], [], 0, 0, 0
    headers = {"X-API-Key": API_KEY}
    with httpx.Client(base_url=url, timeout=10) as client:
        users = [str(u) for u in range(1, 611)]  # ml-latest-small user IDs
        for _ in range(20):  # warm-up: connection, caches
            client.get(f"/v1/users/{users[0]}/recommendations", params={"k": 10})
        for _ in range(events):
            user = rng.choice(users)
            before = client.get(f"/v1/users/{user}/recommendations", params={"k": 50}).json()
            top = [i["item_id"] for i in before["items"]]
            item = rng.choice(top[10:]) if len(top) > 10 else top[-1]
            body = {"user_id": user, "item_id": item, "rating": rng.randint(1, 10) / 2}
            start = time.perf_counter()
            ack = client.post("/v1/events", json=body, headers=headers)
            acked = time.perf_counter()
            if ack.status_code != 201:
                raise RuntimeError(f"event not stored: {ack.status_code} {ack.text}")
            after = client.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json()
            done = time.perf_counter()
            lags.append(done - acked)
            rounds.append(done - start)
            now = [i["item_id"] for i in after["items"]]
            if after["events"] == before["events"] + 1 and item not in now:
                reflected += 1
            changed_set += set(now) != set(top[:10])
            changed_order += now != top[:10]
    return {
        "events": events,
        "ack_to_reflecting_response": latency_ms(lags),
        "write_plus_read": latency_ms(rounds),
        "reflected_share": reflected / events,
        "top10_changed_share": changed_set / events,
        "top10_order_changed_share": changed_order / events,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="MovieLens folder (default: $NEXTWATCH_DATA)")
    parser.add_argument("--artefact", help="artefact directory (default: trained and cached)")
    parser.add_argument("--store", help="event store URL (default: SQLite in a temp home)")
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="JSON path (default: benchmarks/results/...)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    artefact = serving_artefact(args.artefact, args.data_dir, ranker=True)
    with tempfile.TemporaryDirectory(prefix="nextwatch-bench-") as home:
        server = start_server(artefact, Path(home), args.store, args.data_dir)
        try:
            result = measure(server.url, args.events, args.seed)
        finally:
            server.stop()
    backend = "postgresql" if args.store and args.store.startswith("postgres") else "sqlite"
    result = {"store": backend, "artefact": str(artefact), **result}
    name = "event_to_change" + ("" if backend == "sqlite" else "_postgresql")
    path = write_results(name, result, args.output)
    log.info("%s", result)
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
