"""Protocol ann-recall: ScaNN against exact search on the same item vectors.

Two catalogues, both searched with the index nextwatch builds for their size
(``towers.index.IndexParams.for_size``):

1. ml-latest-small's trained item vectors (9,724 x 129, bias folded in) -> exact ScaNN brute
   force. A tree + AH index on the same vectors is reported too, for reference.
2. A synthetic 1,000,000-item catalogue drawn from a Gaussian mixture fitted to those trained
   vectors (k-means clusters, each with its own full covariance, shrunk towards the pooled
   one), so the million items have the clustered, anisotropic structure of real item vectors.
   The queries are the real users' vectors ``[u, 1]`` in both cases.

Reported per index: recall@100 against exact top-100 (numpy), p50/p99 latency of single-query
searches (2,000 after warm-up, one thread), and build time. Brute-force latency on the 1M
catalogue is measured too, as the baseline the index must beat (over at most 300 calls: each
takes about 25 ms).

    python benchmarks/ann.py                 # ~4 min on 2 cores; writes results/ann.json
    python benchmarks/ann.py --items 100000  # quicker
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
from common import latency_ms, serving_artefact, write_results

from serving.api import Recommender
from towers.features import query_inputs
from towers.index import IndexParams, ItemIndex

log = logging.getLogger("ann")
K = 100


def user_queries(rec: Recommender) -> np.ndarray:
    """``[u, 1]`` for every known user, from their stored history and features."""
    users = rec.users
    rows = np.arange(len(users))
    inputs = query_inputs(
        users.histories(rows),
        max_history=rec.max_history,
        demographics=users.demographics(rows),
    )
    return rec.retriever.encoder.queries(inputs)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row indices of the exact top ``k`` inner products (unordered), in blocks of 100k items."""
    best_scores = np.empty((len(queries), 0), np.float32)
    best_rows = np.empty((len(queries), 0), np.int64)
    for start in range(0, len(vectors), 100_000):
        scores = queries @ vectors[start : start + 100_000].T
        local = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, local, 1)], 1)
        best_rows = np.concatenate([best_rows, local + start], 1)
        keep = np.argpartition(-best_scores, min(k, best_scores.shape[1]) - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(best_scores, keep, 1)
        best_rows = np.take_along_axis(best_rows, keep, 1)
    return best_rows


def fit_mixture(vectors: np.ndarray, clusters: int, seed: int) -> list[tuple]:
    """k-means, then per cluster (weight, mean, Cholesky factor of its shrunk covariance)."""
    rng = np.random.default_rng(seed)
    centers = vectors[rng.choice(len(vectors), clusters, replace=False)]
    for _ in range(25):
        d = (vectors**2).sum(1)[:, None] - 2 * vectors @ centers.T + (centers**2).sum(1)[None]
        labels = d.argmin(1)
        centers = np.stack(
            [vectors[labels == c].mean(0) if (labels == c).any() else centers[c]
             for c in range(clusters)]
        )  # fmt: skip
    pooled = np.cov(vectors - centers[labels], rowvar=False)
    dim = vectors.shape[1]
    out = []
    for c in range(clusters):
        members = vectors[labels == c]
        n = len(members)
        if n == 0:
            continue
        own = np.cov(members, rowvar=False) if n > 1 else np.zeros((dim, dim))
        # Shrink towards the pooled covariance with a prior worth `dim` points.
        cov = (n * own + dim * pooled) / (n + dim) + 1e-6 * np.eye(dim)
        out.append((n / len(vectors), members.mean(0), np.linalg.cholesky(cov)))
    return out


def sample_mixture(mixture: list[tuple], n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = np.array([w for w, _, _ in mixture])
    counts = rng.multinomial(n, weights / weights.sum())
    parts = []
    for (_, mean, chol), count in zip(mixture, counts, strict=True):
        parts.append(mean + rng.standard_normal((count, len(mean))) @ chol.T)
    out = np.concatenate(parts).astype(np.float32)
    return out[rng.permutation(n)]


def measure(index: ItemIndex, queries: np.ndarray, truth: np.ndarray, calls: int) -> dict:
    ids_to_row = {item: row for row, item in enumerate(index.item_ids)}
    recalls = []
    for q, exact in zip(queries, truth, strict=True):
        ids, _ = index.search(q[None, :], K)
        got = {ids_to_row[i] for i in ids[0]}
        recalls.append(len(got & set(exact.tolist())) / K)
    for q in queries[:50]:  # warm-up
        index.search(q[None, :], K)
    times = []
    for n in range(calls):
        q = queries[n % len(queries)][None, :]
        start = time.perf_counter()
        index.search(q, K)
        times.append(time.perf_counter() - start)
    return {"recall_at_100": round(float(np.mean(recalls)), 4), **latency_ms(times)}


def run_catalogue(name, ids, vectors, queries, params, calls) -> dict:
    log.info("%s: building %s over %d x %d", name, params.mode, *vectors.shape)
    start = time.perf_counter()
    index = ItemIndex.build(ids, vectors, params)
    build = time.perf_counter() - start
    truth = exact_top_k(vectors, queries, K)
    result = {
        "catalogue": name, "items": len(ids), "dim": vectors.shape[1], "index": params.__dict__,
        "build_seconds": round(build, 2), **measure(index, queries, truth, calls),
    }  # fmt: skip
    log.info("%s", result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="MovieLens folder (default: $NEXTWATCH_DATA)")
    parser.add_argument("--artefact", help="artefact to take vectors from (default: trained)")
    parser.add_argument("--items", type=int, default=1_000_000, help="synthetic catalogue size")
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="JSON path (default: benchmarks/results/ann.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    rec = Recommender.load(serving_artefact(args.artefact, args.data_dir))
    real_ids = rec.retriever.index.item_ids
    real = np.stack([rec.retriever.index.vector(i) for i in real_ids])
    queries = user_queries(rec)
    results = [
        run_catalogue("ml-latest-small", real_ids, real, queries,
                      IndexParams.for_size(len(real)), args.calls),
        run_catalogue("ml-latest-small", real_ids, real, queries,
                      IndexParams.for_size(len(real), mode="tree_ah"), args.calls),
    ]  # fmt: skip
    synthetic = sample_mixture(fit_mixture(real, args.clusters, args.seed), args.items, args.seed)
    synthetic_ids = [str(i) for i in range(args.items)]
    name = f"synthetic-{args.items}"
    results.append(
        run_catalogue(name, synthetic_ids, synthetic, queries, IndexParams.for_size(args.items),
                      args.calls)
    )  # fmt: skip
    # The baseline: exact ScaNN brute force over the same million (fewer calls: it is slow).
    results.append(
        run_catalogue(name, synthetic_ids, synthetic, queries, IndexParams(), min(args.calls, 300))
    )
    write_results(
        "ann",
        {"protocol": "ann-recall", "k": K, "queries": len(queries), "results": results},
        args.output,
    )


if __name__ == "__main__":
    main()
