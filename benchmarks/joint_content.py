"""A content projection trained jointly with the tower, for ``cold_items.py``.

Issue 6 lets the projection from item metadata into the item-vector space be trained jointly
with the tower or fitted as a regression onto the learned softmax rows, and asks for numbers to
choose by. ``nextwatch`` fits the regression (:class:`towers.content.ContentProjection`). This
is the joint alternative, in the manner of DropoutNet (Volkovs, Yu and Poutanen, NeurIPS 2017):
each item's softmax row is the sum of an ID part, the tower's own ``[w_i, b_i]``, and a content
part ``x_i P``, a linear map of the item's metadata bag ``x_i`` (the regression's features),
trained together with the user tower on the next-watch softmax. In each training step every
item's ID part is dropped with probability ``id_dropout``, so that the content part alone has
to place the item where its watchers' user vectors point; a new item is then served by its
content part only, the situation that training rehearsed.
"""

from __future__ import annotations

import numpy as np

from towers._tf import tf
from towers.content import ContentProjection, frame_tokens, token_vocabulary
from towers.data import Dataset
from towers.losses import full_softmax_loss, sampled_softmax_loss
from towers.model import CandidateTower, TowerConfig
from towers.train import build_tower


class JointContentTower(CandidateTower):
    """:class:`towers.model.CandidateTower` whose softmax rows are an ID part plus a content
    part, the content part learned jointly with the tower.

    Parameters
    ----------
    base : CandidateTower
        An untrained tower (:func:`towers.train.build_tower`) whose vocabularies and
        configuration this one takes.
    item_tokens : list of list of str
        Each of ``base.item_ids``' metadata tokens (:func:`towers.content.frame_tokens`).
    id_dropout : float
        Probability, per item and training step, that the item's ID part is left out.
    """

    def __init__(self, base: CandidateTower, item_tokens: list[list[str]], id_dropout: float):
        if not 0 <= id_dropout < 1:
            raise ValueError(f"id_dropout must be in [0, 1), got {id_dropout}")
        if len(item_tokens) != base.num_items:
            raise ValueError(
                f"item_tokens has {len(item_tokens)} entries for {base.num_items} items"
            )
        super().__init__(
            base.config, base.item_ids, base.token_vocabulary, base.item_token_array,
            base.demographic_vocabularies, base.item_counts, base.time_window,
        )  # fmt: skip
        self.id_dropout = id_dropout
        # The regression's features (1 / sqrt(known tokens) per token), so the two compare.
        vocabulary = token_vocabulary(item_tokens)
        self._featurizer = ContentProjection(
            vocabulary, np.zeros((len(vocabulary), 1)), np.zeros(1), 0.0
        )
        self.content_x = tf.sparse.from_dense(self._featurizer.features(item_tokens))
        self.content_weights = self.add_weight(
            name="content_weights",
            shape=(len(vocabulary), base.config.output_dim + 1),
            initializer="zeros",
        )

    def rows(self, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """Every item's softmax vector and bias: ID part (dropped per item in training) plus
        content part."""
        content = tf.sparse.sparse_dense_matmul(self.content_x, self.content_weights)
        vectors, bias = self.item_vectors, self.item_bias
        if training and self.id_dropout > 0:
            keep = tf.cast(tf.random.uniform([self.num_items]) >= self.id_dropout, tf.float32)
            vectors, bias = vectors * keep[:, None], bias * keep
        return vectors + content[:, :-1], bias + content[:, -1]

    def content_rows(self, item_tokens: list[list[str]]) -> np.ndarray:
        """``[vector, bias]`` rows of items from their metadata alone (the content part)."""
        return (self._featurizer.features(item_tokens) @ self.content_weights.numpy()).astype(
            np.float32
        )

    def compute_loss_value(self, user_vectors, labels, seen=None):
        # Called by train_step only, so the ID parts are dropped (test_step has its own loss).
        label_idx = tf.cast(self.label_indices(labels), tf.int64)
        vectors, bias = self.rows(training=True)
        if self.full_softmax:
            return full_softmax_loss(user_vectors, label_idx, vectors, bias, seen)
        return sampled_softmax_loss(
            user_vectors, label_idx, vectors, bias,
            num_sampled=min(self.config.num_negatives, self.num_items),
            unigrams=self.item_counts, seen=seen,
        )  # fmt: skip

    def test_step(self, data):
        inputs, labels = data
        user_vectors = self(inputs, training=False)
        label_idx = tf.cast(self.label_indices(labels), tf.int64)
        seen = inputs.get("seen") if self.config.mask_seen else None
        vectors, bias = self.rows(False)
        self.loss_tracker.update_state(
            full_softmax_loss(user_vectors, label_idx, vectors, bias, seen)
        )
        return {"loss": self.loss_tracker.result()}

    def logits(self, user_vectors):
        vectors, bias = self.rows(False)
        return tf.matmul(user_vectors, vectors, transpose_b=True) + bias

    def item_matrix(self) -> np.ndarray:
        vectors, bias = self.rows(False)
        return np.concatenate([vectors.numpy(), bias.numpy()[:, None]], axis=1).astype(np.float32)


def joint_init(train: Dataset, config: TowerConfig, id_dropout: float):
    """An ``init`` for :func:`towers.train.train_tower`: the tower it would build on ``train``,
    as a :class:`JointContentTower` over the items' metadata tokens."""

    def init(examples) -> JointContentTower:
        base = build_tower(train, config, examples.time_window)
        return JointContentTower(base, frame_tokens(train.items, list(base.item_ids)), id_dropout)

    return init
