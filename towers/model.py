"""The candidate-generation tower of Covington et al. (2016), Sec. 3 and Fig. 3.

Query features (the bag of watched item IDs, the bag of their tokens, demographics, example age) are
embedded, averaged and concatenated, then pass through a ReLU tower whose output is the user vector
``u``. The item vectors are the rows of the softmax output weights ``W`` (with bias ``b``), separate
from the input embeddings, so ``P(next = i | u) = softmax(W u + b)_i``. There is no user-ID
embedding: a user is their features, so new users need no retraining and the model's size does not
grow with the user count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from towers._tf import UntrackedList, keras, tf
from towers.config import TowerConfig
from towers.examples import PAD
from towers.features import DEMOGRAPHIC_COLUMNS
from towers.losses import full_softmax_loss, sampled_softmax_loss


def _masked_mean(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Mean of ``values`` [..., n, d] over axis -2 with 0/1 ``weights`` [..., n]; 0 for none."""
    weights = tf.cast(weights, values.dtype)[..., None]
    total = tf.reduce_sum(values * weights, axis=-2)
    return total / tf.maximum(tf.reduce_sum(weights, axis=-2), 1.0)


def _age_hats_tf(age: tf.Tensor, knots: int) -> tf.Tensor:
    """:func:`towers.features.age_hats` in TensorFlow, for the tower's graph."""
    position = tf.clip_by_value(tf.reshape(age, [-1, 1]), 0.0, 1.0) * float(knots - 1)
    grid = tf.range(knots, dtype=tf.float32)[None, :]
    return tf.maximum(0.0, 1.0 - tf.abs(position - grid))


def _bag_mean(table: tf.Tensor, position: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Each row's mean of ``table[position]`` over the ``True`` entries of ``mask``.

    ``table`` [U, d] holds one vector per distinct item of the batch, ``position`` [B * L] is the
    row of ``table`` at each flattened history slot, and ``mask`` [B, L] says which slots count;
    a row with none gets the zero vector. One fused gather and segment mean, whose gradient
    reaches ``table`` already summed per distinct item instead of as B * L row slices.
    """
    flat = tf.where(tf.reshape(mask, [-1]))[:, 0]
    bag = flat // tf.cast(tf.shape(mask)[1], tf.int64)
    means = tf.sparse.segment_mean(
        table, tf.gather(position, flat), bag, num_segments=tf.shape(mask)[0]
    )
    means.set_shape([mask.shape[0], table.shape[-1]])
    return means


class CandidateTower(keras.Model):
    """Query tower plus softmax item vectors, on raw string IDs.

    Parameters
    ----------
    config : TowerConfig
    item_ids : sequence of str
        The item vocabulary; softmax row ``i`` is ``item_ids[i]``.
    token_vocabulary : sequence of str
        Tokens with embeddings (index ``j`` in ``item_token_table`` is ``token_vocabulary[j-1]``).
    item_token_table : numpy.ndarray of int32, shape (len(item_ids), max_tokens_per_item)
    demographic_vocabularies : mapping of str to list of str, optional
        ``gender``, ``occupation``, ``zip_prefix`` vocabularies; None when the data has none.
    item_counts : numpy.ndarray, shape (len(item_ids),), optional
        Training frequency of each item, for the sampled-softmax proposal.
    time_window : tuple of int
        ``(t_start, t_end)`` of the training log, to turn a query time into an example age.
    """

    def __init__(
        self,
        config: TowerConfig,
        item_ids: Sequence[str],
        token_vocabulary: Sequence[str] = (),
        item_token_table: np.ndarray | None = None,
        demographic_vocabularies: Mapping[str, list[str]] | None = None,
        item_counts: np.ndarray | None = None,
        time_window: tuple[int, int] = (0, 0),
    ) -> None:
        super().__init__()
        self.time_window = (int(time_window[0]), int(time_window[1]))
        self.config = config
        self.item_ids = UntrackedList(str(i) for i in item_ids)
        self.num_items = len(self.item_ids)
        if self.num_items == 0:
            raise ValueError("item_ids is empty: there is nothing to recommend")
        # Index 0 is the padding mask, 1 the OOV bucket; items start at 2.
        self.item_lookup = keras.layers.StringLookup(
            vocabulary=self.item_ids, mask_token="", num_oov_indices=1, name="item_lookup"
        )
        self.history_embedding = keras.layers.Embedding(
            self.num_items + 2, config.embedding_dim, name="history_embedding"
        )
        self.use_tokens = config.use_tokens and len(token_vocabulary) > 0
        if self.use_tokens:
            table = np.zeros((self.num_items + 2, config.max_tokens_per_item), np.int32)
            table[2:] = item_token_table
            self.token_table = tf.constant(table)
            self.token_embedding = keras.layers.Embedding(
                len(token_vocabulary) + 1, config.token_dim, name="token_embedding"
            )
        self.token_vocabulary = UntrackedList(token_vocabulary)
        self.item_token_array = item_token_table
        self.demographic_vocabularies = (
            dict(demographic_vocabularies)
            if config.use_demographics and demographic_vocabularies
            else {}
        )
        self.demographic_lookups = {}
        self.demographic_embeddings = {}
        for col, vocab in self.demographic_vocabularies.items():
            self.demographic_lookups[col] = keras.layers.StringLookup(
                vocabulary=vocab, num_oov_indices=1, name=f"{col}_lookup"
            )
            dim = max(2, int(np.ceil(np.log2(len(vocab) + 2))) * 2)
            self.demographic_embeddings[col] = keras.layers.Embedding(
                len(vocab) + 1, dim, name=f"{col}_embedding"
            )
        self.feature_dropout = keras.layers.Dropout(config.dropout)
        self.tower = [
            keras.layers.Dense(units, activation="relu", name=f"relu_{i}")
            for i, units in enumerate(config.hidden_units)
        ] or [keras.layers.Dense(config.output_dim, name="linear")]
        self.item_vectors = self.add_weight(
            name="item_vectors",
            shape=(self.num_items, config.output_dim),
            initializer=keras.initializers.TruncatedNormal(stddev=1.0 / np.sqrt(config.output_dim)),
        )
        self.item_bias = self.add_weight(
            name="item_bias", shape=(self.num_items,), initializer="zeros"
        )
        counts = np.ones(self.num_items) if item_counts is None else np.asarray(item_counts, float)
        self.item_counts = counts
        self.full_softmax = config.use_full_softmax(self.num_items)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    # ----------------------------------------------------------------------------------------------
    def call(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """User vectors, shape ``(batch, output_dim)``, from the raw input dict of
        :func:`towers.features.query_inputs`."""
        # Each distinct ID of the batch is looked up, embedded and (in training) updated once:
        # a batch of 1024 x 50 IDs reaches into the catalogue-sized tables once per distinct
        # item (a fifth as often on the step-cost benchmark), and memory latency on those
        # tables is what makes a step slower in a bigger catalogue (docs/scale.md).
        if "history_rows" in inputs:
            # Training inputs already looked up (history_rows, below): the same rows.
            history = tf.cast(inputs["history_rows"], tf.int64)
            rows, position = tf.unique(tf.reshape(history, [-1]))
        else:
            raw = tf.convert_to_tensor(inputs["history"], tf.string)
            distinct, position = tf.unique(tf.reshape(raw, [-1]))
            rows = self.item_lookup(distinct)
            history = tf.reshape(tf.gather(rows, position), tf.shape(raw))
        known = history >= 2  # pads and unknown items do not count
        if training and self.config.history_dropout > 0:
            keep = tf.random.uniform(tf.shape(history)) >= self.config.history_dropout
            known = tf.logical_and(known, keep)
        embedded = self.history_embedding(rows)  # one row per distinct item
        # How much history there is (log-scaled, in [0, 1]) lets the tower tell a new user's
        # empty bag, whose mean is the zero vector, from an established one.
        count = tf.reduce_sum(tf.cast(known, tf.float32), axis=1, keepdims=True)
        parts = [
            _bag_mean(embedded, position, known),
            tf.math.log1p(count) / float(np.log1p(self.config.max_history)),
        ]
        if self.config.recent_history > 0:
            length = tf.shape(known)[1]
            latest = tf.range(length) >= length - self.config.recent_history
            parts.append(_bag_mean(embedded, position, tf.logical_and(known, latest[None, :])))
        if self.use_tokens:
            parts.append(_bag_mean(self._token_bags(rows), position, known))
        if self.demographic_vocabularies:
            for col in DEMOGRAPHIC_COLUMNS:
                ids = self.demographic_lookups[col](tf.convert_to_tensor(inputs[col], tf.string))
                parts.append(self.demographic_embeddings[col](ids))
            age = tf.reshape(tf.cast(inputs["age"], tf.float32), [-1])
            missing = tf.math.is_nan(age)
            age = tf.where(missing, 0.0, age / 100.0)
            parts.append(tf.stack([age, age * age, tf.cast(missing, tf.float32)], axis=1))
        if self.config.use_example_age:
            # Paper Sec. 3.3: trained on the example's age, served at 0 (the end of the window).
            ea = tf.reshape(tf.cast(inputs["example_age"], tf.float32), [-1])
            parts.append(tf.stack([ea, ea * ea], axis=1))
            if self.config.age_knots:
                parts.append(_age_hats_tf(ea, self.config.age_knots))
        x = self.feature_dropout(tf.concat(parts, axis=1), training=training)
        for layer in self.tower:
            x = layer(x)
        return x

    def history_rows(self, history: np.ndarray) -> np.ndarray:
        """``history`` (raw item IDs, :data:`towers.examples.PAD` for padding) as the rows
        :attr:`item_lookup` gives them, int32 of the same shape: 0 for padding, 1 for an item
        the model does not know, ``2 + i`` for ``item_ids[i]``. Given as the input
        ``history_rows`` (:func:`towers.train.train_tower` does), a batch needs no string lookup.
        """
        history = np.asarray(history, dtype=object)
        index = np.asarray(pd.Index(self.item_ids).get_indexer(history.ravel()), np.int64)
        rows = np.where(index >= 0, index + 2, 1)
        rows[history.ravel() == PAD] = 0
        return rows.reshape(history.shape).astype(np.int32)

    def _token_bags(self, rows: tf.Tensor) -> tf.Tensor:
        """The mean token embedding of each of the batch's distinct items ``rows`` (lookup
        indices), shape ``(len(rows), token_dim)``: the work is bounded by the batch, not the
        catalogue."""
        tokens = tf.gather(self.token_table, rows)
        return _masked_mean(self.token_embedding(tokens), tokens > 0)

    def logits(self, user_vectors: tf.Tensor) -> tf.Tensor:
        """Full softmax logits ``u W^T + b``, shape ``(batch, num_items)``."""
        return tf.matmul(user_vectors, self.item_vectors, transpose_b=True) + self.item_bias

    def label_indices(self, labels: tf.Tensor) -> tf.Tensor:
        """Softmax row of each raw label ID (labels must be in the vocabulary)."""
        return self.item_lookup(tf.convert_to_tensor(labels, tf.string)) - 2

    def compute_loss_value(
        self, user_vectors: tf.Tensor, labels: tf.Tensor, seen: tf.Tensor | None = None
    ) -> tf.Tensor:
        """The training loss; ``seen`` (``(example, softmax row)`` pairs, shape ``(k, 2)``, or a
        bool ``(batch, num_items)`` mask) is left out of each example's softmax
        (:mod:`towers.losses`)."""
        label_idx = tf.cast(self.label_indices(labels), tf.int64)
        if self.full_softmax:
            return full_softmax_loss(
                user_vectors, label_idx, self.item_vectors, self.item_bias, seen
            )
        return sampled_softmax_loss(
            user_vectors, label_idx, self.item_vectors, self.item_bias,
            num_sampled=min(self.config.num_negatives, self.num_items),
            unigrams=self.item_counts, seen=seen,
        )  # fmt: skip

    def get_config(self) -> dict:
        # Rebuilt from the artefact (towers.artefact.load_artefact), not from this config; it only
        # describes the model in SavedModel metadata.
        return {"tower": self.config.to_dict(), "num_items": self.num_items}

    @property
    def metrics(self) -> list:
        return [self.loss_tracker]

    def train_step(self, data):
        inputs, labels = data
        with tf.GradientTape() as tape:
            user_vectors = self(inputs, training=True)
            seen = None
            if self.config.mask_seen:
                if "seen" not in inputs:
                    raise ValueError(
                        "config.mask_seen is set but the training inputs have no 'seen' (what "
                        "each example's user had watched: (example, softmax row) pairs or a "
                        "(batch, num_items) mask; towers.train adds it)"
                    )
                seen = inputs["seen"]
            loss = self.compute_loss_value(user_vectors, labels, seen)
            # Under tf.distribute the replicas' gradients are summed: scale each replica's mean
            # loss so the sum is the gradient of the global mean (1 replica: unchanged).
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = loss / tf.cast(replicas, loss.dtype)
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables, strict=True))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        # Validation always uses the full softmax, so sampled and full runs compare; with
        # mask_seen it leaves out what each example's user had watched, as training does.
        inputs, labels = data
        user_vectors = self(inputs, training=False)
        label_idx = tf.cast(self.label_indices(labels), tf.int64)
        seen = inputs.get("seen") if self.config.mask_seen else None
        loss = full_softmax_loss(user_vectors, label_idx, self.item_vectors, self.item_bias, seen)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def item_matrix(self) -> np.ndarray:
        """Item vectors with the bias folded in as a last column, shape ``(num_items, d + 1)``.

        A user vector extended with a constant 1 then scores items by one dot product, the full
        logit (this is what the retrieval index stores).
        """
        return np.concatenate(
            [self.item_vectors.numpy(), self.item_bias.numpy()[:, None]], axis=1
        ).astype(np.float32)
