"""New item to candidates: how soon an item added from metadata is retrieved for a matching user.

A real ``nextwatch serve`` (benchmark artefact with its ranker and content projection, store
seeded with ml-latest-small, 2 worker processes as in the load benchmark) runs as its own
process. For each of N trials, over HTTP on loopback:

1. a real movie X is drawn (seeded) and a new item is made from its metadata only (its title
   with " (new cut)", genres, year, tags), under an ID nobody has watched;
2. the "matching user" is an anonymous history of the 10 trained movies whose metadata shares
   the most tokens with X (a user who watches movies like it);
3. the clock starts before ``POST /v1/items``; then ``POST /v1/recommendations`` with that history,
   ``k=100`` and ``rank=false`` (the candidate generator's top 100) is repeated every 10 ms until
   the new item is among the candidates; the clock stops at that response (target <= 1 s).

The request may land on either worker: the one that did not take the POST learns of the item
from the store within ``item_sync_interval_s`` (0.2 s). Reported: p50/p99/max of POST -> in
candidates, the POST's own latency, the share of trials where the item was in the candidates
within 1 s, its median rank there, and how often the ranker then puts it in the top 10.

    python benchmarks/new_item.py

Writes ``benchmarks/results/new_item.json``.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from common import latency_ms, serving_artefact, write_results
from live import API_KEY, start_server

from towers.content import frame_tokens
from towers.movielens import load_movielens
from towers.train import fit_content_projection

log = logging.getLogger("new_item")
TIMEOUT_S = 5.0


def trials(data_dir: str | None, n: int, seed: int) -> list[dict]:
    """``n`` new items (metadata of real movies) and each one's matching history."""
    data = load_movielens("ml-latest-small", data_dir)
    counts = data.interactions["item_id"].value_counts()
    items = data.items[data.items["item_id"].isin(counts.index[:3000])].reset_index(drop=True)
    tokens = [set(t) for t in frame_tokens(items, items["item_id"].tolist())]
    rng = random.Random(seed)
    out = []
    for row in rng.sample(range(len(items)), n):
        overlap = np.array([len(tokens[row] & t) / max(len(tokens[row] | t), 1) for t in tokens])
        overlap[row] = -1.0
        similar = np.argsort(-overlap, kind="stable")[:10]
        meta = items.iloc[row]
        out.append(
            {
                "item": {
                    "item_id": f"new-{meta['item_id']}-{seed}",
                    "title": f"{meta['title']} (new cut)",
                    "genres": [g for g in meta["genres"] if g != "(no genres listed)"],
                    "year": None if np.isnan(meta["year"]) else int(meta["year"]),
                    "tags": sorted({str(t) for t in meta["tags"]})[:100],
                },
                "history": items["item_id"].iloc[similar].astype(str).tolist(),
            }
        )
    return out


def measure(url: str, cases: list[dict]) -> dict:
    headers = {"X-API-Key": API_KEY}
    lags, posts, ranks, in_top10, missed = [], [], [], 0, []
    with httpx.Client(base_url=url, timeout=10) as client:
        for case in cases:  # warm-up: connections, both workers
            client.post("/v1/recommendations", json={"history": case["history"], "k": 100})
        for case in cases:
            item_id = case["item"]["item_id"]
            body = {"history": case["history"], "k": 100, "rank": False}
            start = time.perf_counter()
            response = client.post("/v1/items", json=case["item"], headers=headers)
            posted = time.perf_counter()
            if response.status_code != 201:
                raise RuntimeError(f"item not added: {response.status_code} {response.text}")
            posts.append(posted - start)
            found = None
            while time.perf_counter() - start < TIMEOUT_S:
                got = client.post("/v1/recommendations", json=body).json()["items"]
                ids = [i["item_id"] for i in got]
                if item_id in ids:
                    found = ids.index(item_id) + 1
                    break
                time.sleep(0.01)
            if found is None:
                missed.append(item_id)
                continue
            lags.append(time.perf_counter() - start)
            ranks.append(found)
            ranked = client.post("/v1/recommendations", json={**body, "k": 10, "rank": True})
            in_top10 += item_id in [i["item_id"] for i in ranked.json()["items"]]
    within = sum(lag <= 1.0 for lag in lags)
    return {
        "trials": len(cases),
        "post_to_candidates_ms": latency_ms(lags) | {"max": round(max(lags) * 1e3, 2)}
        if lags
        else None,
        "post_ms": latency_ms(posts),
        "in_candidates_within_1s": round(within / len(cases), 3),
        "never_in_candidates": missed,
        "median_rank_in_candidates": float(np.median(ranks)) if ranks else None,
        "ranked_top10_share": round(in_top10 / len(cases), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="MovieLens (default: $NEXTWATCH_DATA)")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    artefact = serving_artefact(data_dir=args.data_dir, ranker=True)
    if not (artefact / "content.npz").exists():  # cached before projections existed
        fit_content_projection(artefact, load_movielens("ml-latest-small", args.data_dir).items)
    cases = trials(args.data_dir, args.trials, args.seed)
    with tempfile.TemporaryDirectory(prefix="nextwatch-new-item-") as home:
        server = start_server(artefact, Path(home), data_dir=args.data_dir, workers=args.workers)
        try:
            result = measure(server.url, cases)
        finally:
            server.stop()
    log.info("%s", result)
    payload = {"protocol": "new-item-to-candidates", "workers": args.workers, **result}
    log.info("wrote %s", write_results("new_item", payload, args.output))


if __name__ == "__main__":
    main()
