"""Retrieval baselines, measured with the same harness as nextwatch (towers.evaluate).

* most-popular: train counts.
* EASE (Steck 2019): closed form ``B = I - P diagMat(1 / diag(P))``, ``P = (X^T X + λI)^-1``.
* user-kNN: the training users who share the most items with a user vote for their items.
* implicit-feedback ALS (Hu, Koren, Volinsky 2008) from the ``implicit`` package.
* the TFRS basic-retrieval two-tower: user-ID embedding against item-ID embedding, in-batch
  softmax, as in the TensorFlow Recommenders tutorial.

EASE and ALS hyperparameters are tuned on a validation split carved from train with the same
protocol as the test split, then refitted on all of train.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from towers.evaluate import HistoryIndex, evaluate_retrieval
from towers.splits import Split, per_user_tail

log = logging.getLogger(__name__)
# Validation grids of the tuned baselines (benchmarks/retrieval.py, benchmarks/tfrs_diagnostic.py).
EASE_GRID = [{"lam": v} for v in (100.0, 300.0, 1000.0, 3000.0)]
ALS_GRID = [
    {"factors": f, "regularization": r, "alpha": a}
    for f in (32, 64, 128) for r in (0.01, 0.1) for a in (1.0, 10.0)
]  # fmt: skip


def interaction_matrix(
    frame: pd.DataFrame, item_ids: Sequence[str]
) -> tuple[sp.csr_matrix, dict[str, int]]:
    """Binary user × item CSR matrix over ``item_ids`` (items outside it are dropped)."""
    index = {str(i): n for n, i in enumerate(item_ids)}
    frame = frame[frame["item_id"].isin(index)]
    users = sorted(frame["user_id"].unique())
    user_index = {u: n for n, u in enumerate(users)}
    rows = frame["user_id"].map(user_index).to_numpy()
    cols = frame["item_id"].map(index).to_numpy()
    matrix = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(len(users), len(index))
    )
    matrix.data[:] = 1.0  # repeated (user, item) events count once
    return matrix, user_index


def _row_scorer(
    matrix: sp.csr_matrix,
    user_index: dict[str, int],
    scores_of: Callable[[sp.csr_matrix], np.ndarray],
) -> Callable:
    def score(user_ids: Sequence[str]) -> np.ndarray:
        rows = [user_index.get(str(u), -1) for u in user_ids]
        empty = sp.csr_matrix((1, matrix.shape[1]), dtype=np.float32)
        block = sp.vstack([matrix[r] if r >= 0 else empty for r in rows]).tocsr()
        return scores_of(block)

    return score


def most_popular(train: pd.DataFrame, item_ids: Sequence[str]) -> Callable:
    """Score = train count of the item, the same for every user."""
    counts = train["item_id"].value_counts().reindex(list(item_ids)).fillna(0).to_numpy(np.float64)
    return lambda user_ids: np.tile(counts, (len(user_ids), 1))


def ease_weights(x, lam: float) -> np.ndarray:
    """EASE^R's item-item matrix ``B`` (zero diagonal) for a user-item matrix ``x``."""
    gram = (x.T @ x).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    b[np.diag_indices_from(b)] = 0.0
    return b


def user_knn_scores(
    bags: np.ndarray, x: sp.csr_matrix, *, size_power: float, sharpness: float, idf: bool
) -> np.ndarray:
    """User-kNN scores for the rows of ``bags`` (users x items, 0/1) against the training
    user-item matrix ``x``.

    A training user ``v``'s weight is ``(overlap / |I_v| ** size_power) ** sharpness``, where
    ``overlap`` counts the items they share with the bag (each weighted by
    ``log(n_users / (1 + count))`` when ``idf``); an item's score is the sum of the weights of the
    training users who have it. A tiny multiple of the item's count breaks ties, so that a bag
    sharing nothing gets most-popular (ties among the voted items are broken the same way).
    """
    dense = x.toarray().astype(np.float64)
    counts = dense.sum(axis=0)
    weights = np.log(len(dense) / (1.0 + counts)) if idf else np.ones_like(counts)
    overlap = (bags * weights) @ dense.T
    sizes = np.maximum(dense.sum(axis=1), 1.0)
    scores = ((overlap / sizes**size_power) ** sharpness) @ dense
    scale = scores.max(axis=1, keepdims=True)
    scale[scale == 0] = 1.0
    return scores + 1e-6 * scale * counts / max(counts.max(), 1.0)


USER_KNN_GRID = [
    {"size_power": a, "sharpness": b, "idf": i}
    for a in (0.0, 0.5, 1.0) for b in (1.0, 2.0, 4.0, 8.0) for i in (False, True)
]  # fmt: skip


def ease(train: pd.DataFrame, item_ids: Sequence[str], lam: float) -> Callable:
    """EASE^R scorer with L2 strength ``lam``."""
    x, user_index = interaction_matrix(train, item_ids)
    b = ease_weights(x, lam)
    return _row_scorer(x, user_index, lambda block: np.asarray(block @ b))


def ease_at_events(train: pd.DataFrame, item_ids: Sequence[str], lam: float) -> Callable:
    """EASE^R asked per query time (an :data:`towers.evaluate.EventScoreFn`): the bag is the
    user's training items strictly before the time, the history a query then would have had."""
    x, _ = interaction_matrix(train, item_ids)
    b = ease_weights(x, lam)
    index = {str(i): n for n, i in enumerate(item_ids)}
    history = HistoryIndex(train)

    def score(user_ids: Sequence[str], timestamps: np.ndarray) -> np.ndarray:
        bags = np.zeros((len(user_ids), len(index)))
        for row, items in enumerate(history.before(user_ids, timestamps)):
            bags[row, [index[i] for i in items if i in index]] = 1.0
        return bags @ b

    return score


def als(
    train: pd.DataFrame,
    item_ids: Sequence[str],
    factors: int,
    regularization: float,
    alpha: float,
    iterations: int = 15,
    seed: int = 0,
) -> Callable:
    """implicit's ALS (CPU) scorer: ``score = user_factors · item_factors``."""
    from implicit.cpu.als import AlternatingLeastSquares

    x, user_index = interaction_matrix(train, item_ids)
    model = AlternatingLeastSquares(
        factors=factors, regularization=regularization, alpha=alpha, iterations=iterations,
        random_state=seed, calculate_training_loss=False,
    )  # fmt: skip
    model.fit(x, show_progress=False)
    users, items = np.asarray(model.user_factors), np.asarray(model.item_factors)

    def score(user_ids: Sequence[str]) -> np.ndarray:
        rows = np.array([user_index.get(str(u), -1) for u in user_ids])
        vecs = np.where(rows[:, None] >= 0, users[np.clip(rows, 0, None)], 0.0)
        return vecs @ items.T

    return score


def tfrs_two_tower(
    train: pd.DataFrame,
    item_ids: Sequence[str],
    *,
    embedding_dim: int = 32,
    epochs: int = 3,
    learning_rate: float = 0.1,
    seed: int = 42,
) -> Callable:
    """The TFRS basic-retrieval tutorial model: user-ID and item-ID embeddings, in-batch softmax
    (``tfrs.tasks.Retrieval``), Adagrad(0.1), batch 8192, 3 epochs."""
    import tensorflow_recommenders as tfrs

    from towers._tf import keras, tf

    keras.utils.set_random_seed(seed)
    users = sorted(train["user_id"].astype(str).unique())
    items = [str(i) for i in item_ids]

    def tower(vocab: list[str]) -> keras.Model:
        return keras.Sequential([
            keras.layers.StringLookup(vocabulary=vocab, mask_token=None),
            keras.layers.Embedding(len(vocab) + 1, embedding_dim),
        ])  # fmt: skip

    class TwoTower(tfrs.Model):
        def __init__(self) -> None:
            super().__init__()
            self.user_model, self.item_model = tower(users), tower(items)
            self.task = tfrs.tasks.Retrieval()

        def compute_loss(self, features, training=False):
            return self.task(
                self.user_model(features["user_id"]), self.item_model(features["item_id"])
            )

    model = TwoTower()
    model.compile(optimizer=keras.optimizers.Adagrad(learning_rate))
    ds = (
        tf.data.Dataset.from_tensor_slices(
            {
                "user_id": train["user_id"].astype(str).to_numpy(),
                "item_id": train["item_id"].astype(str).to_numpy(),
            }
        )
        .shuffle(len(train), seed=seed, reshuffle_each_iteration=False)
        .batch(8192)
        .cache()
    )
    model.fit(ds, epochs=epochs, verbose=0)
    item_vecs = model.item_model(tf.constant(items)).numpy()

    def score(user_ids: Sequence[str]) -> np.ndarray:
        return model.user_model(tf.constant([str(u) for u in user_ids])).numpy() @ item_vecs.T

    return score


def validation_split(split: Split) -> Split:
    """Carve validation from train with the test split's own protocol (tfrs-80-20 and
    random-80-20: a temporal-user-20 carve, scored like the others on NDCG@10 with seen items
    excluded)."""
    protocol = (
        split.protocol
        if split.protocol in ("temporal-user-20", "leave-last-one")
        else ("temporal-user-20")
    )
    return per_user_tail(split.train, protocol)


def tune(
    split: Split,
    make: Callable[..., Callable],
    grid: Sequence[dict],
    metric: str = "ndcg@10",
) -> tuple[dict, list[dict]]:
    """Pick the ``grid`` point with the best ``metric`` on a validation split carved from train.

    Returns
    -------
    best : dict
        The chosen parameters.
    trials : list of dict
        Every grid point with its validation metric.
    """
    val = validation_split(split)
    val_items = sorted(val.train["item_id"].astype(str).unique())
    trials = []
    for params in grid:
        value = evaluate_retrieval(make(val.train, val_items, **params), val_items, val)[metric]
        trials.append({**params, metric: round(value, 5)})
        log.info("validation %s %s = %.4f", params, metric, value)
    best = max(trials, key=lambda t: t[metric])
    return {k: v for k, v in best.items() if k != metric}, trials
