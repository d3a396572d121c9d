"""A multinomial denoising autoencoder trained on the cold-user task, for ``cold_plateau.py``.

Mult-DAE (Liang, Krishnan, Hoffman and Jebara, "Variational Autoencoders for Collaborative
Filtering", WWW 2018) reads a user's bag of items, L2-normalised, through one ``tanh`` layer and
scores every item with a softmax; it is trained to give the items the user watched a high
multinomial likelihood. Here its input is what a new user has, the user's *first* ``m`` items
(``m`` uniform in 1 to ``max_prefix``, as the new-user tower's extra examples), and its target
is every later item of the user, the relevant set of protocol cold-user-k. So it is a second
family (no softmax tower, no features, a nonlinear item-to-item map) trained on exactly the
question that the benchmark asks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from towers._tf import keras, tf


class PrefixDAE:
    """Mult-DAE over ``num_items`` items, trained on users' first items against their later ones.

    Parameters
    ----------
    num_items : int
        Size of the item vocabulary; items are row indices ``0 .. num_items - 1``.
    hidden : int
        Width of the ``tanh`` layer.
    dropout : float
        Dropout on the hidden layer in training.
    max_prefix : int
        The longest first-items input drawn in training.
    learning_rate : float
        Adam's rate.
    batch_size : int
        Users per step.
    seed : int
        Seeds the weights and the draws of users and prefix lengths.
    """

    def __init__(
        self,
        num_items: int,
        hidden: int = 200,
        dropout: float = 0.2,
        max_prefix: int = 10,
        learning_rate: float = 1e-3,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        if num_items < 1 or hidden < 1 or max_prefix < 1 or batch_size < 1:
            raise ValueError("num_items, hidden, max_prefix and batch_size must be >= 1")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_items, self.max_prefix, self.batch_size = num_items, max_prefix, batch_size
        self.rng = np.random.default_rng(seed)
        keras.utils.set_random_seed(seed)
        self.model = keras.Sequential([
            keras.layers.Dense(hidden, activation="tanh"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(num_items),
        ])  # fmt: skip
        self.optimizer = keras.optimizers.Adam(learning_rate)
        self._step = tf.function(self._train_step)

    def _train_step(self, bags: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            logp = tf.nn.log_softmax(self.model(tf.math.l2_normalize(bags, 1), training=True))
            per_user = tf.reduce_sum(logp * targets, 1) / tf.maximum(tf.reduce_sum(targets, 1), 1)
            loss = -tf.reduce_mean(per_user)
        variables = self.model.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    def _batch(self, sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        bags = np.zeros((self.batch_size, self.num_items), np.float32)
        targets = np.zeros_like(bags)
        for row, user in enumerate(self.rng.integers(len(sequences), size=self.batch_size)):
            items = sequences[user]
            m = int(self.rng.integers(1, self.max_prefix + 1))
            bags[row, items[:m]] = 1.0
            targets[row, items[m:]] = 1.0
        return bags, targets

    def fit(self, sequences: Sequence[np.ndarray], epochs: int) -> float:
        """Train for ``epochs`` passes; a pass draws ``max_prefix`` examples per user on
        average. ``sequences`` are the training users' items in time order (row indices).
        Returns the last step's loss."""
        if not sequences:
            raise ValueError("sequences is empty")
        steps = max(1, len(sequences) * self.max_prefix // self.batch_size)
        loss = float("nan")
        for _ in range(epochs * steps):
            loss = float(self._step(*self._batch(sequences)))
        return loss

    def scores(self, bags: np.ndarray) -> np.ndarray:
        """``[users, num_items]`` scores (logits) for 0/1 ``bags`` of the same width."""
        if bags.ndim != 2 or bags.shape[1] != self.num_items:
            raise ValueError(f"bags must be [users, {self.num_items}], got {bags.shape}")
        normalised = tf.math.l2_normalize(np.asarray(bags, np.float32), 1)
        return self.model(normalised, training=False).numpy()
