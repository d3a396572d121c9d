"""New item to candidates: how soon an item added from metadata is retrieved for a matching user.

A real ``nextwatch serve`` (benchmark artefact with its ranker and content projection, store
seeded with ml-latest-small, 2 worker processes as in the load benchmark) runs as its own
process. For each of N trials, over HTTP on loopback:

1. a real movie X is drawn (seeded) and a new item is made from its metadata only (its title
   with " (new cut)", genres, year, tags), under an ID nobody has watched;
2. the "matching user" is the real (stored) user for whom the vector that the content projection
   gives the item ranks best among the items they have not watched, computed from the artefact
   before the item is posted; an item that no user would have in their top 100 has no matching
   user, and is counted as such;
3. the clock starts before ``POST /v1/items``; then ``GET /v1/users/{u}/recommendations`` with
   ``k=100`` and ``rank=false`` (the candidate generator's top 100) is repeated every 10 ms until
   the new item is among the candidates; the clock stops at that response (target <= 1 s).

That measures the path from the write to retrieval. Where the projection places an item is a
quality question, which the cold-item protocol answers (``benchmarks/cold_start.py``); this
benchmark adds one plain figure: the new item's rank among all items for a *content*-matching
user, whose history is the 10 trained movies sharing the most metadata tokens with X.

The request may land on either worker: the one that did not take the POST learns of the item
from the store within ``item_sync_interval_s`` (0.2 s). Reported: p50/p99/max of POST -> in
candidates, the POST's own latency, the share of trials where the item was in the candidates
within 1 s, how often the ranker then puts it in the top 10, and the content-matching user's rank
of it.

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

from towers.artefact import fit_content_projection
from towers.content import ContentProjection, frame_tokens, metadata_tokens
from towers.movielens import load_movielens

log = logging.getLogger("new_item")
TIMEOUT_S = 5.0


def trials(artefact: Path, data_dir: str | None, n: int, seed: int) -> list[dict]:
    """``n`` new items (metadata of real movies) and, for each, the real user who ranks it best
    and a content-matching history."""
    from serving.api import Recommender

    data = load_movielens("ml-latest-small", data_dir)
    counts = data.interactions["item_id"].value_counts()
    items = data.items[data.items["item_id"].isin(counts.index[:3000])].reset_index(drop=True)
    tokens = [set(t) for t in frame_tokens(items, items["item_id"].tolist())]
    projection = ContentProjection.load(artefact)
    rec = Recommender.load(artefact)
    users = rec.users.user_ids
    histories = rec.users.histories(rec.users.rows(users))
    known = rec.retriever.encoder.known_only
    queries = rec.encode([known(h)[-50:] for h in histories], [{}] * len(users))
    scores = queries @ np.load(artefact / "item_vectors.npy").T  # users x trained items
    trained = (artefact / "vocab" / "items.txt").read_text(encoding="utf-8").split("\n")
    position = {item: n for n, item in enumerate(t for t in trained if t)}
    rng = random.Random(seed)
    out = []
    for row in rng.sample(range(len(items)), n):
        overlap = np.array([len(tokens[row] & t) / max(len(tokens[row] | t), 1) for t in tokens])
        overlap[row] = -1.0
        similar = np.argsort(-overlap, kind="stable")[:10]
        meta = items.iloc[row]
        item = {
            "item_id": f"new-{meta['item_id']}-{seed}",
            "title": f"{meta['title']} (new cut)",
            "genres": [g for g in meta["genres"] if g != "(no genres listed)"],
            "year": None if np.isnan(meta["year"]) else int(meta["year"]),
            "tags": sorted({str(t) for t in meta["tags"]})[:100],
        }
        placed = projection.predict(
            [metadata_tokens(item["title"], item["genres"], item["year"], item["tags"])]
        )[0]
        # Its rank for each real user, among the items they have not watched (ties count for it).
        above = scores > (queries @ placed)[:, None]
        for u, history in enumerate(histories):
            above[u, [position[h] for h in history if h in position]] = False
        ranks = above.sum(axis=1) + 1
        best = int(np.argmin(ranks))
        out.append(
            {
                "item": item,
                "user": users[best],
                "user_rank": int(ranks[best]),
                "users_with_it_in_top100": int((ranks <= 100).sum()),
                "content_history": items["item_id"].iloc[similar].astype(str).tolist(),
            }
        )
    return out


def _user_ids(client: httpx.Client, user: str, k: int) -> list[str]:
    got = client.get(f"/v1/users/{user}/recommendations", params={"k": k, "rank": "false"})
    return [i["item_id"] for i in got.json()["items"]]


def _history_ids(client: httpx.Client, history: list[str], k: int) -> list[str]:
    body = {"history": history, "k": k, "rank": False}
    return [i["item_id"] for i in client.post("/v1/recommendations", json=body).json()["items"]]


def measure(url: str, cases: list[dict]) -> dict:
    headers = {"X-API-Key": API_KEY}
    lags, posts, content_ranks, in_top10, missed = [], [], [], 0, []
    reachable = [c for c in cases if c["user_rank"] <= 100]
    with httpx.Client(base_url=url, timeout=10) as client:
        for case in cases:  # warm-up: connections, both workers
            _user_ids(client, case["user"], 100)
        for case in cases:
            item_id = case["item"]["item_id"]
            start = time.perf_counter()
            response = client.post("/v1/items", json=case["item"], headers=headers)
            posted = time.perf_counter()
            if response.status_code != 201:
                raise RuntimeError(f"item not added: {response.status_code} {response.text}")
            posts.append(posted - start)
            if case["user_rank"] <= 100:
                found = False
                while time.perf_counter() - start < TIMEOUT_S:
                    if item_id in _user_ids(client, case["user"], 100):
                        found = True
                        break
                    time.sleep(0.01)
                if found:
                    lags.append(time.perf_counter() - start)
                    ranked = client.get(
                        f"/v1/users/{case['user']}/recommendations", params={"k": 10}
                    )
                    in_top10 += item_id in [i["item_id"] for i in ranked.json()["items"]]
                else:
                    missed.append(item_id)
            got = _history_ids(client, case["content_history"], 500)  # the API's largest k
            content_ranks.append(got.index(item_id) + 1 if item_id in got else 501)
    ranks = np.array(content_ranks)
    return {
        "trials": len(cases),
        "items_with_a_matching_user": len(reachable),
        "users_with_the_item_in_top100": {
            "median": float(np.median([c["users_with_it_in_top100"] for c in cases])),
            "max": max(c["users_with_it_in_top100"] for c in cases),
        },
        "post_to_candidates_ms": latency_ms(lags) | {"max": round(max(lags) * 1e3, 2)}
        if lags
        else None,
        "post_ms": latency_ms(posts),
        "in_candidates_within_1s": round(
            sum(lag <= 1.0 for lag in lags) / max(len(reachable), 1), 3
        ),
        "not_in_candidates_after_5s": missed,
        "ranked_top10_share": round(in_top10 / max(len(lags), 1), 3),
        "content_history": {
            "in_top100_share": round(float((ranks <= 100).mean()), 3),
            "in_top500_share": round(float((ranks <= 500).mean()), 3),
            "median_rank": float(np.median(ranks)),  # 501: beyond the top 500
        },
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
    cases = trials(artefact, args.data_dir, args.trials, args.seed)
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
