"""cold-item, for ``cold_start.py`` (its ``items`` part): held-out items added from metadata by
the content projection, ranked among themselves for each user who watched one, next to random
order and most-popular-within-genre; the ridge projection next to one trained on the softmax
objective. Part ``items-joint`` adds a projection trained jointly with the tower
(``joint_content.py``), its ID dropout picked on a second carve of items.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
from cold_common import (
    train_counts,
    user_vectors,
)
from joint_content import joint_init

from towers._tf import keras, tf
from towers.coldstart import cold_item_metrics, cold_item_split
from towers.content import ContentProjection, frame_tokens
from towers.examples import build_examples, latest_histories
from towers.features import UserFeatures
from towers.presets import benchmark_config, benchmark_options
from towers.train import example_inputs, train_tower

log = logging.getLogger("benchmarks.cold_start")


def softmax_projection(model, train, tokens, epochs: int = 4, seed: int = 0) -> ContentProjection:
    """A projection trained on the softmax objective with the user tower fixed: the next-watch
    label is predicted from the user vector against item rows computed from metadata alone."""
    probe = ContentProjection.fit(tokens, model.item_matrix(), l2=1.0)
    x = tf.sparse.from_dense(probe.features(tokens))
    examples = build_examples(
        train.interactions, max_history=model.config.max_history,
        max_examples_per_user=model.config.max_examples_per_user, seed=seed,
    )  # fmt: skip
    inputs = example_inputs(examples, train, model.config)
    batches = range(0, len(examples), 4096)
    users = np.concatenate(
        [model({k: v[i : i + 4096] for k, v in inputs.items()}).numpy() for i in batches]
    )
    users = np.concatenate([users, np.ones((len(users), 1), np.float32)], axis=1)
    labels = model.label_indices(examples.label).numpy()
    keras.utils.set_random_seed(seed)
    weights = tf.Variable(tf.zeros_like(probe.weights))
    intercept = tf.Variable(probe.intercept)
    optimizer = keras.optimizers.Adam(3e-3)
    ds = (
        tf.data.Dataset.from_tensor_slices((users, labels))
        .shuffle(len(labels), seed=seed)
        .batch(512)
    )
    for _ in range(epochs):
        for u, y in ds:
            with tf.GradientTape() as tape:
                rows = tf.sparse.sparse_dense_matmul(x, weights) + intercept
                logits = tf.matmul(u, rows, transpose_b=True)
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
                ) + 1e-6 * tf.reduce_sum(weights**2)
            grads = tape.gradient(loss, [weights, intercept])
            optimizer.apply_gradients(zip(grads, [weights, intercept], strict=True))
    return ContentProjection(probe.vocabulary, weights.numpy(), intercept.numpy(), 0.0)


RIDGE = "nextwatch (ridge projection)"
#: ID dropout of the jointly trained projection, picked on the validation carve of items.
JOINT_DROPOUT = (0.0, 0.1, 0.25, 0.5)


def _joint_name(dropout: float) -> str:
    return f"nextwatch (projection trained jointly, ID dropout {dropout})"


def cold_items(
    data,
    split: tuple[pd.DataFrame, pd.DataFrame, list[str]] | None = None,
    joint: Sequence[float] = (),
    softmax: bool = True,
) -> dict:
    """Protocol cold-item on ``split`` (``(train, held-out interactions, held-out item IDs)``;
    the protocol's by default): every model's AUC and Recall@10 among the held-out items. The
    ridge projection and the baselines always; the softmax-trained projection if ``softmax``;
    a jointly trained projection (its own tower) for each ID dropout in ``joint``."""
    train_frame, held, cold_ids = split if split is not None else cold_item_split(data.interactions)
    train = data.with_interactions(train_frame)
    config, options = benchmark_config(data.name), benchmark_options(verbose=0, dataset=data.name)
    result = train_tower(train, config, options)
    model = result.model
    items = model.item_ids
    meta = data.items.set_index(data.items["item_id"].astype(str))
    counts = train_counts(train_frame, items)
    start = time.perf_counter()
    ridge = ContentProjection.fit(frame_tokens(data.items, items), model.item_matrix(), counts)
    ridge_seconds = time.perf_counter() - start
    cold_tokens = frame_tokens(data.items, cold_ids)

    test_users = sorted(held["user_id"].astype(str).unique())
    col = {i: n for n, i in enumerate(cold_ids)}
    positives = np.zeros((len(test_users), len(cold_ids)), dtype=bool)
    row_of = {u: n for n, u in enumerate(test_users)}
    for u, i in zip(held["user_id"].astype(str), held["item_id"].astype(str), strict=True):
        positives[row_of[u], col[i]] = True
    history = latest_histories(train_frame, 50)  # (timestamp, numeric item ID) order
    hist = [history.get(u, []) for u in test_users]
    end = train_frame["timestamp"].max()
    users = UserFeatures.from_frame(data.users)

    def vectors_of(tower) -> np.ndarray:
        return user_vectors(tower, hist, [end] * len(test_users), users, test_users)

    vectors = vectors_of(model)
    models = {RIDGE: vectors @ ridge.predict(cold_tokens).T}
    seconds = {"ridge_fit_seconds": round(ridge_seconds, 2)}
    if softmax:
        start = time.perf_counter()
        trained = softmax_projection(model, train, frame_tokens(data.items, items))
        seconds["softmax_fit_seconds"] = round(time.perf_counter() - start, 2)
        models["nextwatch (softmax-trained projection)"] = vectors @ trained.predict(cold_tokens).T
    for dropout in joint:
        tower = train_tower(train, config, options, init=joint_init(train, config, dropout))
        seconds[f"joint_{dropout}_train_seconds"] = tower.metrics["train_seconds"]
        rows = tower.model.content_rows(cold_tokens)
        models[_joint_name(dropout)] = vectors_of(tower.model) @ rows.T

    genres = [set(g) for g in meta.reindex(cold_ids)["genres"]]
    item_genres = meta.reindex(items)["genres"]
    genre_count: dict[str, float] = {}
    for g, c in zip(item_genres, counts, strict=True):
        for name in g if isinstance(g, list | np.ndarray) else ():
            genre_count[name] = genre_count.get(name, 0.0) + c
    by_genre = np.array([max((genre_count.get(g, 0.0) for g in gs), default=0.0) for gs in genres])
    user_genre = np.zeros((len(test_users), len(cold_ids)))
    genre_of = dict(zip(items, item_genres, strict=True))
    for r, h in enumerate(hist):
        share: dict[str, float] = {}
        for i in h:
            for g in genre_of.get(i, ()):
                share[g] = share.get(g, 0.0) + 1.0 / max(len(h), 1)
        user_genre[r] = [np.mean([share.get(g, 0.0) for g in gs]) if gs else 0.0 for gs in genres]
    rng = np.random.default_rng(0)
    models |= {
        "random": rng.random(positives.shape),
        "most-popular-within-genre": np.tile(by_genre, (len(test_users), 1)),
        "user-genre-affinity": user_genre,
    }
    table = {
        name: {k: round(v, 4) for k, v in cold_item_metrics(s, positives).items()}
        for name, s in models.items()
    }
    log.info("%s cold-item: %s", data.name, table)
    return {
        "cold_items": len(cold_ids),
        "held_out_interactions": len(held),
        "test_users": len(test_users),
        "ridge_l2": ridge.l2,
        **seconds,
        "train_seconds": result.metrics["train_seconds"],
        "models": table,
    }


def joint_items(data) -> dict:
    """The jointly trained projection against the ridge one: its ID dropout picked on a second
    carve of items inside the protocol's training items (``cold_item_split(train, seed=12)``)
    by the mean relative margin over the ridge projection in AUC and Recall@10, then the
    protocol's table with the pick, in one run."""
    train_frame, held, cold_ids = cold_item_split(data.interactions)
    val = cold_items(data, cold_item_split(train_frame, seed=12), JOINT_DROPOUT, softmax=False)
    ridge = val["models"][RIDGE]

    def margin(dropout: float) -> float:
        row = val["models"][_joint_name(dropout)]
        return float(np.mean([row[m] / ridge[m] - 1 for m in ("auc", "recall@10")]))

    margins = {str(d): round(margin(d), 4) for d in JOINT_DROPOUT}
    pick = max(JOINT_DROPOUT, key=margin)
    log.info("%s joint projection, validation margins over the ridge: %s", data.name, margins)
    test = cold_items(data, (train_frame, held, cold_ids), (pick,))
    return {"validation": val, "validation_margins": margins, "id_dropout": pick, "test": test}
