"""cold-item, for ``cold_start.py`` (its ``items`` part): held-out items added from metadata by
the content projection, ranked among themselves for each user who watched one, next to random
order and most-popular-within-genre; the ridge projection next to one trained on the softmax
objective.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from cold_common import (
    train_counts,
    user_vectors,
)

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


def cold_items(data) -> dict:
    train_frame, held, cold_ids = cold_item_split(data.interactions)
    train = data.with_interactions(train_frame)
    result = train_tower(
        train, benchmark_config(data.name), benchmark_options(verbose=0, dataset=data.name)
    )
    model = result.model
    items = model.item_ids
    meta = data.items.set_index(data.items["item_id"].astype(str))
    counts = train_counts(train_frame, items)
    start = time.perf_counter()
    ridge = ContentProjection.fit(frame_tokens(data.items, items), model.item_matrix(), counts)
    ridge_seconds = time.perf_counter() - start
    start = time.perf_counter()
    trained = softmax_projection(model, train, frame_tokens(data.items, items))
    softmax_seconds = time.perf_counter() - start
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
    vectors = user_vectors(
        model, hist, [end] * len(test_users), UserFeatures.from_frame(data.users), test_users
    )

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
    models = {
        "nextwatch (ridge projection)": vectors @ ridge.predict(cold_tokens).T,
        "nextwatch (softmax-trained projection)": vectors @ trained.predict(cold_tokens).T,
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
        "ridge_fit_seconds": round(ridge_seconds, 2),
        "softmax_fit_seconds": round(softmax_seconds, 2),
        "train_seconds": result.metrics["train_seconds"],
        "models": table,
    }
