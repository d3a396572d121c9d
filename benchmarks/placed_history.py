"""A rating of a film added from metadata: would counting it in the user's bag help?

A film added through ``POST /v1/items`` gets an item vector from the content projection, so it
can be recommended at once. In a user's history it is ignored until a retrain (it is not in the
tower's vocabulary), so a rating of it does not move the user's vector. This benchmark asks
whether it should: it gives each such film a row of its own in the bag, an input embedding from a
ridge projection of its metadata tokens onto the tower's learned input embeddings (fitted as the
content projection is, on the trained items weighted by ``log(1 + count)``) and its token bag
computed exactly as the tower computes a trained item's, and compares the answers.

The carve: protocol cold-item's 10 % of items (``default_rng(11)``) are removed from protocol
temporal-user-20's training part, a tower (the benchmark preset) is trained on the rest, and
every user whose training part holds a held-out item among its last 50 (the bag's window) ranks
their test part, less held-out items, among the trained items (seen ones excluded), asked just
after their last training event:

* **ignored**: the held-out items left out of the bag (what the service does);
* **placed**: in the bag with their placed rows, from the plain regression;
* **placed, stretched**: the same with the regression's rows stretched to the learned rows'
  spread, as the item-vector projection's are;
* **retrained**: a tower trained (same seed) on the whole training part, held-out items
  included, ranking the same trained items: what a retrain that has seen them watched gives;
* **most-popular** over the same items, for scale.

Also the share of those users whose top 10 changes between *ignored* and *placed*. A second
table takes the users whose newest training item is a held-out one (they just rated a new film).
Each seed trains both towers again.

    python benchmarks/placed_history.py --data-dir ../shared/data        # ~10 min on 2 cores

Writes ``benchmarks/results/placed_history.json``.
"""

from __future__ import annotations

import argparse
import logging
import time

import common
import numpy as np
from cold_common import train_counts

from towers.coldstart import cold_item_split
from towers.content import ContentProjection, frame_tokens
from towers.examples import example_age
from towers.features import UserFeatures, query_inputs
from towers.metrics import retrieval_metrics, top_k
from towers.movielens import load_movielens
from towers.presets import benchmark_config, benchmark_options
from towers.query import QueryEncoder
from towers.splits import chronological, make_split
from towers.train import train_tower

log = logging.getLogger("benchmarks.placed_history")
WINDOW = 50


def _scores(encoder, histories, times, users, user_ids, window, matrix) -> np.ndarray:
    inputs = query_inputs(
        [encoder.known_only(h) for h in histories], max_history=encoder.max_history,
        user_features=users, user_ids=np.asarray(user_ids, dtype=str),
        example_age=example_age(np.asarray(times, np.float64), window),
    )  # fmt: skip
    return encoder.queries(inputs) @ matrix.T


def _metrics(scores: np.ndarray, seen: list[np.ndarray], relevant: list[set[int]]) -> dict:
    ranked = top_k(scores.astype(np.float64), 50, seen)
    out = retrieval_metrics(ranked, relevant, ks=(10, 50))
    return {k: round(v, 4) for k, v in out.items() if k != "hr@10"}


def placed_encoder(model, ids: list[str], tokens: list[list[str]], placement) -> QueryEncoder:
    """The tower's numpy encoder with ``ids`` appended to its vocabulary: input embeddings from
    ``placement`` (metadata tokens -> embedding row), token bags as the tower computes them (the
    mean embedding of the item's first ``max_tokens_per_item`` tokens the tower knows)."""
    arrays = dict(QueryEncoder.from_model(model).arrays)
    rows = placement.predict(tokens)
    arrays["history_embedding"] = np.vstack([arrays["history_embedding"], rows])
    if "token_bags" in arrays:
        index = {t: j + 1 for j, t in enumerate(model.token_vocabulary)}
        table = model.token_embedding.embeddings.numpy()
        limit = model.config.max_tokens_per_item
        bags = np.zeros((len(ids), table.shape[1]), np.float32)
        for row, bag in enumerate(tokens):
            kept = [index[t] for t in bag[:limit] if t in index]
            if kept:
                bags[row] = table[kept].mean(axis=0)
        arrays["token_bags"] = np.vstack([arrays["token_bags"], bags])
    vocabularies = model.demographic_vocabularies or None
    return QueryEncoder(model.config, list(model.item_ids) + list(ids), arrays, vocabularies)


def placed_history(data, seed: int) -> dict:
    split = make_split(data.interactions, "temporal-user-20")
    _, _, cold_ids = cold_item_split(data.interactions)
    cold = set(cold_ids)
    train = split.train
    warm_train = train[~train["item_id"].astype(str).isin(cold)]
    config = benchmark_config(data.name)
    options = benchmark_options(verbose=0, seed=seed, dataset=data.name)
    start = time.perf_counter()
    result = train_tower(data.with_interactions(warm_train), config, options)
    train_seconds = time.perf_counter() - start
    model = result.model
    items = model.item_ids  # the trained items: every arm ranks these
    matrix = model.item_matrix()
    column = {i: n for n, i in enumerate(items)}
    encoder = QueryEncoder.from_model(model)
    # Fitted as the content projection is; plain: the regression itself (the conditional mean).
    stretched = ContentProjection.fit(
        frame_tokens(data.items, items),
        encoder.arrays["history_embedding"][2:],
        train_counts(warm_train, items),
    )
    plain = ContentProjection(stretched.vocabulary, stretched.weights, stretched.intercept, 0.0)
    ordered = chronological(train)
    histories = {
        str(u): [str(i) for i in g.tolist()]
        for u, g in ordered.groupby("user_id", sort=False)["item_id"]
    }
    last_time = ordered.groupby("user_id", sort=False)["timestamp"].max()
    test = split.test[split.test["item_id"].astype(str).isin(column)]
    relevant_of = test.groupby(test["user_id"].astype(str))["item_id"].agg(
        lambda s: {column[str(i)] for i in s}
    )
    user_ids = sorted(
        u for u, h in histories.items() if u in relevant_of and cold & set(h[-WINDOW:])
    )
    recent = [u for u in user_ids if histories[u][-1] in cold]
    hist = [histories[u][-WINDOW:] for u in user_ids]
    times = [int(last_time[u]) for u in user_ids]
    # Every film of the training part is left out of the answer, as the service leaves out
    # all of a user's history, not only the bag's window.
    seen = [
        np.array([column[i] for i in set(histories[u]) if i in column], np.int64) for u in user_ids
    ]
    relevant = [relevant_of[u] for u in user_ids]
    users = UserFeatures.from_frame(data.users)
    window = model.time_window

    def scores_of(enc: QueryEncoder, mat: np.ndarray = matrix) -> np.ndarray:
        return _scores(enc, hist, times, users, user_ids, window, mat)

    tokens = frame_tokens(data.items, cold_ids)
    arms = {
        "ignored": scores_of(encoder),
        "placed": scores_of(placed_encoder(model, cold_ids, tokens, plain)),
        "placed, stretched": scores_of(placed_encoder(model, cold_ids, tokens, stretched)),
    }
    start = time.perf_counter()
    full = train_tower(data.with_interactions(train), config, options)
    retrain_seconds = time.perf_counter() - start
    position = {i: n for n, i in enumerate(full.model.item_ids)}
    full_matrix = full.model.item_matrix()[[position[i] for i in items]]
    arms["retrained"] = scores_of(QueryEncoder.from_model(full.model), full_matrix)
    counts = train_counts(train, items)
    arms["most-popular"] = np.tile(counts, (len(user_ids), 1))
    newest = set(recent)
    rows = {"all": np.arange(len(user_ids)), "newest item held out": np.array(
        [n for n, u in enumerate(user_ids) if u in newest], np.int64
    )}  # fmt: skip
    tables = {}
    for name, take in rows.items():
        tables[name] = {
            arm: _metrics(s[take], [seen[n] for n in take], [relevant[n] for n in take])
            for arm, s in arms.items()
        }
        before = top_k(arms["ignored"][take].astype(np.float64), 10, [seen[n] for n in take])
        after = top_k(arms["placed"][take].astype(np.float64), 10, [seen[n] for n in take])
        changed = np.mean([set(a) != set(b) for a, b in zip(before, after, strict=True)])
        tables[name]["top10_changed_share"] = round(float(changed), 4)
        log.info("%s seed %d, %s users: %s", data.name, seed, name, tables[name])
    share = [len(cold & set(h)) / len(h) for h in hist]
    return {
        "held_out_items": len(cold_ids),
        "users": len(user_ids),
        "users_newest_held_out": len(recent),
        "mean_held_out_share_of_bag": round(float(np.mean(share)), 4),
        "placement_l2": stretched.l2,
        "placement_spread": round(stretched.spread, 3),
        "train_seconds": round(train_seconds, 1),
        "retrain_seconds": round(retrain_seconds, 1),
        "tables": tables,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", default=None, help="MovieLens folder (default: $NEXTWATCH_DATA)"
    )
    parser.add_argument("--datasets", nargs="+", default=["ml-latest-small", "ml-100k"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    payload: dict = {"protocol": "temporal-user-20 with cold-item's items held out", "datasets": {}}
    for name in args.datasets:
        data = load_movielens(name, args.data_dir)
        for seed in args.seeds:
            entry = payload["datasets"].setdefault(name, {})
            entry[f"seed_{seed}"] = placed_history(data, seed)
            common.write_results("placed_history", payload, args.output)
    payload["wall_seconds"] = round(time.perf_counter() - start, 1)
    log.info("wrote %s", common.write_results("placed_history", payload, args.output))


if __name__ == "__main__":
    main()
