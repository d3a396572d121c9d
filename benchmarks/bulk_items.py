"""A bulk import of new items: how much of users' lists do items placed from metadata take, and
what does that cost the lists?

``POST /v1/items`` places a new item from its metadata (the content projection), whose vectors
are stretched away from the mean row so that a new item can compete with trained ones (see
``towers/content.py``). One item at a time, that is what makes it recommendable. This benchmark
places a tenth of the catalogue at once, on a protocol built from two of
``../shared/PROTOCOLS.md``:

1. cold-item's held-out 10 % of items (``default_rng(11)``; a second carve, ``seed=12``, checks
   that the picture does not hang on one draw), and temporal-user-20 on the whole log (each
   user's last ``ceil(n / 5)`` events are test);
2. the benchmark tower is trained on the train part without the held-out items and saved as
   ``nextwatch train-candidates`` saves it; the held-out items are then placed from metadata as
   ``POST /v1/items`` places them (``serving.served.Served.add_items``);
3. every user with test items asks the Python API for the generator's order (``rank=False``)
   with their whole train part as history (held-out items included, which the bag ignores, as
   the live service would see it). Relevant: their test items outside that history, held-out
   items included (they are retrievable once placed); items the tower never saw and that were
   not placed count as misses.

Rows: the held-out items **not placed** (none can be recommended), placed with **no cap** (the
service before ``Recommender.placed_share``), placed and held to **a share of each list** (at
most ``floor(share * k)``, at least one: ``towers.retrieval.placed_cap``), and placed with the
stretch scaled down, with no cap, as the other way to keep them from crowding. Recall@10,
Recall@50, NDCG@10; the share of top-10 slots the placed items take; and the share of placed
items that reach at least one user's top 10 (their exposure). Then the same for the ranked top
10 (``rank=True``, the service's default answer) under ``"ranked"``, from a ranker trained for
each carve's tower with the settings ``nextwatch serve`` uses
(``ranking.train.validated_settings``); ``--no-ranker`` skips it.

    python benchmarks/bulk_items.py --data-dir ../shared/data     # ~35-50 min on 2 cores
    python benchmarks/bulk_items.py --data-dir ../shared/data --no-ranker     # ~3.5 min

Writes ``benchmarks/results/bulk_items.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import pandas as pd

from ranking.pipeline import train_ranker_job
from ranking.train import validated_settings
from serving.api_types import Query
from serving.served import Served
from serving.store import ItemRecord
from towers.artefact import save_artefact
from towers.coldstart import cold_item_split
from towers.content import ContentProjection
from towers.metrics import retrieval_metrics
from towers.movielens import load_movielens
from towers.presets import benchmark_config, benchmark_options
from towers.splits import chronological, make_split
from towers.train import peak_rss_mb, train_tower

log = logging.getLogger("bulk_items")
SHARES = (0.1, 0.2, 0.3)
STRETCHES = (0.5, 0.75)
CARVES = (11, 12)


def records(items: pd.DataFrame, ids: list[str]) -> list[ItemRecord]:
    """The held-out items as ``POST /v1/items`` bodies would give them: metadata only."""
    meta = items.set_index(items["item_id"].astype(str)).reindex(ids)
    out = []
    for item_id, row in meta.iterrows():
        year = row.get("year")
        tags = row.get("tags") if "tags" in meta else None
        out.append(
            ItemRecord(
                str(item_id), str(row["title"]), tuple(row["genres"]),
                None if pd.isna(year) else int(year),
                tuple(tags) if isinstance(tags, list | tuple | np.ndarray) else (),
            )
        )  # fmt: skip
    return out


def _stretched(projection: ContentProjection, factor: float) -> ContentProjection:
    """``projection`` with its stretch (``spread``) scaled by ``factor``."""
    return ContentProjection(
        projection.vocabulary, projection.weights, projection.intercept, projection.l2,
        projection.spread * factor, projection.center,
    )  # fmt: skip


def carve(data, seed: int, work: Path, ranker: bool = True) -> dict:
    """Every row of the module docstring for the held-out items of ``cold_item_split(seed)``."""
    _, _, cold_ids = cold_item_split(data.interactions, seed=seed)
    cold = set(cold_ids)
    split = make_split(data.interactions, "temporal-user-20")
    train = chronological(split.train)
    warm_frame = train[~train["item_id"].astype(str).isin(cold)]
    trained = set(warm_frame["item_id"].astype(str))
    items = data.items[data.items["item_id"].astype(str).isin(trained)].reset_index(drop=True)
    subset = dataclasses.replace(data.with_interactions(warm_frame), items=items)
    start = time.perf_counter()
    result = train_tower(
        subset, benchmark_config(data.name), benchmark_options(verbose=0, dataset=data.name)
    )
    save_artefact(result, work, data=subset)
    train_seconds = {"tower": round(time.perf_counter() - start, 1)}
    if ranker:
        start = time.perf_counter()
        rank_config, rank_options = validated_settings(data.name)
        train_ranker_job(work, subset, work / "ranker", rank_config, rank_options)
        train_seconds["ranker"] = round(time.perf_counter() - start, 1)
    placed = records(data.items, sorted(cold & set(data.interactions["item_id"].astype(str))))

    histories = train.groupby(train["user_id"].astype(str))["item_id"].apply(
        lambda s: [str(i) for i in s]
    )
    tests = split.test.groupby(split.test["user_id"].astype(str))["item_id"].apply(
        lambda s: {str(i) for i in s}
    )
    users, relevant_ids = [], []
    for user, test in tests.items():
        history = histories.get(user, [])
        relevant = test - set(history)
        if relevant:
            users.append(user)
            relevant_ids.append(relevant)
    placed_ids = {r.item_id for r in placed}
    codes: dict[str, int] = {}

    def code(item: str) -> int:
        return codes.setdefault(item, len(codes))

    relevant = [{code(i) for i in rel} for rel in relevant_ids]
    in_relevant = sum(len(rel & placed_ids) for rel in relevant_ids)
    total_relevant = sum(len(rel) for rel in relevant_ids)

    def measured(rec, k: int, rank: bool) -> dict:
        queries = [Query(history=histories.get(u, []), k=k, rank=rank) for u in users]
        lists = [r.item_ids for r in rec.recommend_batch(queries)]
        ranked = np.array([[code(i) for i in ids] for ids in lists], np.int64)
        metrics = retrieval_metrics(ranked, relevant, ks=(k,))
        out = {f"recall@{k}": round(metrics[f"recall@{k}"], 4)}
        if k == 10:
            out["ndcg@10"] = round(metrics["ndcg@10"], 4)
            slots = [i in placed_ids for ids in lists for i in ids]
            out["placed_share_of_top10"] = round(float(np.mean(slots)), 4)
            shown = {i for ids in lists for i in ids if i in placed_ids}
            out["placed_items_in_some_top10"] = round(len(shown) / len(placed_ids), 4)
        return out

    def answer(served: Served, share: float | None) -> dict:
        rec = served.recommender
        rec.placed_share = share
        out = {**measured(rec, 10, False), **measured(rec, 50, False)}
        if rec.reranker is not None:
            out["ranked"] = measured(rec, 10, True)
        return out

    def loaded(stretch: float = 1.0) -> Served:
        served = Served.load(work)
        if stretch != 1.0:
            served = dataclasses.replace(served, projection=_stretched(served.projection, stretch))
        return served

    rows = {"not placed": answer(loaded(), None)}
    start = time.perf_counter()
    served = loaded()
    served.add_items(placed)
    place_seconds = time.perf_counter() - start
    rows["placed, no cap"] = answer(served, None)
    for share in SHARES:
        rows[f"placed, at most {share:.0%} of a list"] = answer(served, share)
    for stretch in STRETCHES:
        scaled = loaded(stretch)
        scaled.add_items(placed)
        rows[f"placed, stretch x{stretch}, no cap"] = answer(scaled, None)
    out = {
        "seed": seed,
        "users": len(users),
        "placed_items": len(placed),
        "placed_share_of_relevant": round(in_relevant / total_relevant, 4),
        "spread": round(float(served.projection.spread), 3),
        "train_seconds": train_seconds,
        "place_seconds": round(place_seconds, 2),
        "rows": rows,
    }
    log.info("%s seed %d: %s", data.name, seed, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", default=None, help="MovieLens folder (default: $NEXTWATCH_DATA)"
    )
    parser.add_argument("--datasets", nargs="+", default=["ml-latest-small", "ml-100k"])
    parser.add_argument(
        "--no-ranker", action="store_true", help="the generator's lists only (no ranked rows)"
    )
    parser.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    payload: dict = {
        "protocol": "cold-item x temporal-user-20 (module docstring), candidate order",
        "datasets": {},
    }
    for name in args.datasets:
        data = load_movielens(name, args.data_dir)
        payload["datasets"][name] = {}
        for seed in CARVES:
            with tempfile.TemporaryDirectory(prefix="nextwatch-bulk-items-") as work:
                payload["datasets"][name][f"carve {seed}"] = carve(
                    data, seed, Path(work), ranker=not args.no_ranker
                )
            common.write_results("bulk_items", payload, args.output)
    payload["wall_seconds"] = round(time.perf_counter() - start, 1)
    payload["peak_rss_mb"] = peak_rss_mb()
    log.info("wrote %s", common.write_results("bulk_items", payload, args.output))


if __name__ == "__main__":
    main()
