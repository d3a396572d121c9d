"""A fastai-style EmbeddingDotBias rating baseline, in Keras.

fastai's ``collab_learner(dls, n_factors=50, y_range=(0, 5.5))`` then ``fit_one_cycle(5, 5e-3,
wd=0.1)``: user and item embeddings of 50 plus a bias each, ``sigmoid_range(u·i + b_u + b_i, 0,
5.5)``, Adam with decoupled weight decay 0.1, batch 64, and the one-cycle schedule (learning rate
warms from max/25 to max over the first 25 % of steps with a cosine, then anneals to max/1e5),
Adam's beta2 = 0.99 and eps = 1e-5 as in fastai. Deviations: no momentum (beta1) cycling, and the
last partial batch is kept (fastai drops it). Unknown users or items in the test set predict
from the biases they have (an unknown ID's embedding is the zero row).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from towers._tf import keras, tf


class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """fastai's one-cycle learning rate (cosine up for ``pct_start``, cosine down after)."""

    def __init__(self, max_lr: float, total_steps: int, pct_start: float = 0.25) -> None:
        self.max_lr = max_lr
        self.total = max(total_steps, 2)
        self.up = max(int(self.total * pct_start), 1)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        start, end = self.max_lr / 25.0, self.max_lr / 1e5  # fastai: div=25, div_final=1e5

        def cos(a, b, frac):
            return b + (a - b) * (1 + tf.cos(math.pi * tf.clip_by_value(frac, 0.0, 1.0))) / 2

        warm = cos(self.max_lr, start, 1.0 - step / self.up)
        cool = cos(self.max_lr, end, (step - self.up) / (self.total - self.up))
        return tf.where(step < self.up, warm, cool)

    def get_config(self):
        return {"max_lr": self.max_lr, "total_steps": self.total}


def embedding_dot_bias(
    train: pd.DataFrame,
    test: pd.DataFrame,
    *,
    n_factors: int = 50,
    epochs: int = 5,
    max_lr: float = 5e-3,
    weight_decay: float = 0.1,
    batch_size: int = 64,
    y_range: tuple[float, float] = (0.0, 5.5),
    seed: int = 0,
) -> np.ndarray:
    """Predicted ratings for ``test`` rows after training on ``train`` (both with ``user_id``,
    ``item_id``, ``rating``)."""
    tf.keras.utils.set_random_seed(seed)
    users = pd.Index(train["user_id"].astype(str).unique())
    items = pd.Index(train["item_id"].astype(str).unique())

    def codes(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        u = users.get_indexer(frame["user_id"].astype(str)) + 1  # 0: unknown
        i = items.get_indexer(frame["item_id"].astype(str)) + 1
        return u.astype(np.int32), i.astype(np.int32)

    u_in = keras.Input((), dtype="int32")
    i_in = keras.Input((), dtype="int32")
    init = keras.initializers.TruncatedNormal(stddev=0.01)  # fastai's trunc_normal_(std=0.01)
    u_emb = keras.layers.Embedding(len(users) + 1, n_factors, embeddings_initializer=init)(u_in)
    i_emb = keras.layers.Embedding(len(items) + 1, n_factors, embeddings_initializer=init)(i_in)
    u_bias = keras.layers.Embedding(len(users) + 1, 1, embeddings_initializer=init)(u_in)
    i_bias = keras.layers.Embedding(len(items) + 1, 1, embeddings_initializer=init)(i_in)
    dot = keras.layers.Dot(axes=1)([u_emb, i_emb])
    logit = keras.layers.Add()(
        [dot, keras.layers.Flatten()(u_bias), keras.layers.Flatten()(i_bias)]
    )
    low, high = y_range
    out = keras.layers.Lambda(lambda z: low + (high - low) * tf.sigmoid(z[:, 0]))(logit)
    model = keras.Model([u_in, i_in], out)
    steps = epochs * math.ceil(len(train) / batch_size)
    model.compile(
        # fastai's Adam: beta2 0.99, eps 1e-5 (Keras defaults are 0.999 and 1e-7).
        optimizer=keras.optimizers.AdamW(
            OneCycle(max_lr, steps), weight_decay=weight_decay, beta_2=0.99, epsilon=1e-5
        ),
        loss="mse",
    )
    u, i = codes(train)
    model.fit(
        [u, i], train["rating"].to_numpy(np.float32), batch_size=batch_size, epochs=epochs,
        shuffle=True, verbose=0,
    )  # fmt: skip
    tu, ti = codes(test)
    return model.predict([tu, ti], batch_size=8192, verbose=0)
