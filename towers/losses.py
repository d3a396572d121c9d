"""Softmax losses over the item vectors: full, and sampled with logQ correction.

Sampled softmax (Jean et al. 2015; Covington et al. 2016, Sec. 3.2) scores the true item against
``m`` negatives drawn from a proposal ``Q`` (item frequency ** 0.75 here). Each logit is corrected
by ``- log E[count_i]`` (the logQ correction; ``E[count_i] = m Q(i)`` when sampling with
replacement),
and a sampled item that is the example's own label (an "accidental hit") is removed. When every item
is sampled exactly once, each correction is ``log 1 = 0`` and the loss equals the full softmax.
"""

from __future__ import annotations

import numpy as np

from towers._tf import tf


def full_softmax_loss(
    user_vectors: tf.Tensor, labels: tf.Tensor, item_vectors: tf.Tensor, item_bias: tf.Tensor
) -> tf.Tensor:
    """Mean cross-entropy of ``softmax(u W^T + b)`` against ``labels``.

    Parameters
    ----------
    user_vectors : tf.Tensor, float32, shape (batch, d)
    labels : tf.Tensor, int64, shape (batch,)
        Softmax row of the true item.
    item_vectors : tf.Tensor, float32, shape (num_items, d)
    item_bias : tf.Tensor, float32, shape (num_items,)

    Returns
    -------
    tf.Tensor, scalar float32
    """
    logits = tf.matmul(user_vectors, item_vectors, transpose_b=True) + item_bias
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )


def sampled_softmax_loss(
    user_vectors: tf.Tensor,
    labels: tf.Tensor,
    item_vectors: tf.Tensor,
    item_bias: tf.Tensor,
    *,
    num_sampled: int,
    unigrams: np.ndarray | None = None,
    distortion: float = 0.75,
    sampled_values: tuple[tf.Tensor, tf.Tensor, tf.Tensor] | None = None,
) -> tf.Tensor:
    """Mean sampled-softmax cross-entropy with logQ correction and accidental-hit removal.

    Parameters
    ----------
    user_vectors, labels, item_vectors, item_bias :
        As in :func:`full_softmax_loss`.
    num_sampled : int
        Negatives per batch (shared by all examples in the batch); at least the catalogue's
        size gives the full softmax.
    unigrams : numpy.ndarray, shape (num_items,), optional
        Item frequencies for the proposal ``Q ∝ unigrams ** distortion``; uniform when None.
    distortion : float
        Exponent on the frequencies (0.75 flattens the head, as in word2vec).
    sampled_values : tuple, optional
        ``(sampled_ids [m], true_expected_count [batch, 1], sampled_expected_count [m])`` to use
        instead of drawing; tests pass every item with counts of 1.

    Returns
    -------
    tf.Tensor, scalar float32
    """
    num_items = int(item_vectors.shape[0])
    if sampled_values is None and num_sampled >= num_items:
        # Every item is drawn exactly once: the loss is the full softmax. (The sampler would
        # still report expected counts below 1 for rare items under a skewed proposal, and
        # its logQ correction would then bias the loss.)
        return full_softmax_loss(user_vectors, labels, item_vectors, item_bias)
    labels_2d = tf.reshape(tf.cast(labels, tf.int64), [-1, 1])
    if sampled_values is None:
        if unigrams is None:
            unigrams = np.ones(num_items)
        # Unique sampling without replacement: the sampler reports each item's expected count
        # (the Q of the logQ correction) accounting for the rejection of repeats.
        sampled_values = tf.random.fixed_unigram_candidate_sampler(
            true_classes=labels_2d,
            num_true=1,
            num_sampled=num_sampled,
            unique=True,
            range_max=num_items,
            distortion=distortion,
            unigrams=[float(max(c, 1e-3)) for c in unigrams],
        )
    # tf.nn.sampled_softmax_loss subtracts log(expected count) from true and sampled logits
    # (subtract_log_q=True) and masks sampled items equal to the label (remove_accidental_hits).
    losses = tf.nn.sampled_softmax_loss(
        weights=item_vectors,
        biases=item_bias,
        labels=labels_2d,
        inputs=user_vectors,
        num_sampled=num_sampled,
        num_classes=num_items,
        num_true=1,
        sampled_values=sampled_values,
        remove_accidental_hits=True,
    )
    return tf.reduce_mean(losses)
