"""Softmax losses over the item vectors: full, and sampled with logQ correction.

Sampled softmax (Jean et al. 2015; Covington et al. 2016, Sec. 3.2) scores the true item against
``m`` negatives drawn from a proposal ``Q`` (item frequency ** 0.75 here). Each logit is corrected
by ``- log E[count_i]`` (the logQ correction; ``E[count_i] = m Q(i)`` when sampling with
replacement),
and a sampled item that is the example's own label (an "accidental hit") is removed. When every item
is sampled exactly once, each correction is ``log 1 = 0`` and the loss equals the full softmax.

Both losses can also leave out of each example's softmax the items its user had already watched
(``seen``: ``(example, item row)`` pairs, or a bool ``(batch, num_items)`` mask; see
:mod:`towers.seen`), except its own label: a request excludes those from its answer anyway, so
the model should not spend its capacity pushing them down. It is the role of the zero diagonal in
EASE (Steck 2019), for a model that scores items from a bag of the same items.
"""

from __future__ import annotations

import numpy as np

from towers._tf import tf

# A left-out logit: exp() of it is 0 in float32, and it stays finite (no NaN in 0 * inf).
_LEFT_OUT = -1e9


def _left_out(seen: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """The ``seen`` pairs ``(example, item row)``, int64 ``(k, 2)``, that are not the example's
    own label: the logits to leave out."""
    seen = tf.cast(seen, tf.int64)
    keep = tf.not_equal(seen[:, 1], tf.gather(tf.cast(labels, tf.int64), seen[:, 0]))
    return tf.boolean_mask(seen, keep)


def _seen_mask(pairs: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """Boolean ``shape`` ``(batch, num_items)``, True at the ``(example, row)`` ``pairs``.

    A one-byte scatter (a max, so a pair listed many times, a re-watch, stays 1), applied
    with ``tf.where``, whose gradient is a select: on ml-latest-small this costs a step about
    a third of what scattering into the float logits and into their gradient did."""
    hits = tf.tensor_scatter_nd_max(
        tf.zeros(shape, tf.int8), pairs, tf.ones(tf.shape(pairs)[:1], tf.int8)
    )
    return hits > 0


def full_softmax_loss(
    user_vectors: tf.Tensor,
    labels: tf.Tensor,
    item_vectors: tf.Tensor,
    item_bias: tf.Tensor,
    seen: tf.Tensor | None = None,
) -> tf.Tensor:
    """Mean cross-entropy of ``softmax(u W^T + b)`` against ``labels``.

    Parameters
    ----------
    user_vectors : tf.Tensor, float32, shape (batch, d)
    labels : tf.Tensor, int64, shape (batch,)
        Softmax row of the true item.
    item_vectors : tf.Tensor, float32, shape (num_items, d)
    item_bias : tf.Tensor, float32, shape (num_items,)
    seen : tf.Tensor, optional
        The items each example's user had watched before it: ``(example, softmax row)`` pairs,
        int ``(k, 2)``, or a bool ``(batch, num_items)`` mask. They are left out of that
        example's softmax (its label never is).

    Returns
    -------
    tf.Tensor, scalar float32
    """
    logits = tf.matmul(user_vectors, item_vectors, transpose_b=True) + item_bias
    if seen is not None:
        if seen.dtype == tf.bool:
            # Clear each example's own label in the mask (B updates, not a pass over it).
            at = tf.stack([tf.range(tf.shape(labels, out_type=tf.int64)[0]), labels], axis=1)
            mask = tf.tensor_scatter_nd_update(seen, at, tf.zeros(tf.shape(labels), tf.bool))
        else:
            mask = _seen_mask(_left_out(seen, labels), tf.shape(logits, out_type=tf.int64))
        logits = tf.where(mask, tf.constant(_LEFT_OUT, logits.dtype), logits)
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
    seen: tf.Tensor | None = None,
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
    seen : tf.Tensor, optional
        As in :func:`full_softmax_loss` (pairs or a mask): a sampled item the example's user
        had watched is left out of its softmax, as an accidental hit is.

    Returns
    -------
    tf.Tensor, scalar float32
    """
    num_items = int(item_vectors.shape[0])
    if sampled_values is None and num_sampled >= num_items:
        # Every item is drawn exactly once: the loss is the full softmax. (The sampler would
        # still report expected counts below 1 for rare items under a skewed proposal, and
        # its logQ correction would then bias the loss.)
        return full_softmax_loss(user_vectors, labels, item_vectors, item_bias, seen)
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
            # One vectorised conversion: a comprehension here is traced by AutoGraph call by
            # call, about half a minute per trace at a million items (docs/scale.md, "Start-up").
            unigrams=np.maximum(np.asarray(unigrams, np.float64), 1e-3).tolist(),
        )
    if seen is not None:
        return _sampled_loss_without_seen(
            user_vectors, labels_2d[:, 0], item_vectors, item_bias, sampled_values, seen
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


def _sampled_loss_without_seen(
    user_vectors: tf.Tensor,
    labels: tf.Tensor,
    item_vectors: tf.Tensor,
    item_bias: tf.Tensor,
    sampled_values: tuple[tf.Tensor, tf.Tensor, tf.Tensor],
    seen: tf.Tensor,
) -> tf.Tensor:
    """What ``tf.nn.sampled_softmax_loss`` computes (logQ-corrected logits, accidental hits
    removed), with each example's ``seen`` items also left out of its sampled negatives."""
    sampled, true_expected, sampled_expected = sampled_values
    sampled = tf.cast(sampled, tf.int64)
    true_logits = (
        tf.reduce_sum(user_vectors * tf.gather(item_vectors, labels), axis=1)
        + tf.gather(item_bias, labels)
        - tf.math.log(tf.reshape(true_expected, [-1]))
    )
    sampled_logits = (
        tf.matmul(user_vectors, tf.gather(item_vectors, sampled), transpose_b=True)
        + tf.gather(item_bias, sampled)
        - tf.math.log(sampled_expected)
    )
    if seen.dtype == tf.bool:
        found = tf.gather(seen, sampled, axis=1)
    else:
        found = _sampled_found(seen, labels, sampled, tf.shape(item_vectors, out_type=tf.int64)[0])
    # A sampled item that is the example's label is an accidental hit either way.
    left_out = tf.logical_or(found, tf.equal(sampled[None, :], labels[:, None]))
    out = tf.constant(_LEFT_OUT, sampled_logits.dtype)
    sampled_logits = tf.where(left_out, out, sampled_logits)
    logits = tf.concat([true_logits[:, None], sampled_logits], axis=1)
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.zeros_like(labels), logits=logits)
    )


def _sampled_found(
    seen: tf.Tensor, labels: tf.Tensor, sampled: tf.Tensor, num_items: tf.Tensor
) -> tf.Tensor:
    """Bool ``(batch, len(sampled))``: whether each sampled item is among the example's
    ``seen`` pairs, by a sorted search on one int64 key per pair (the work is bounded by the
    batch, not the catalogue)."""
    pairs = _left_out(seen, labels)
    keys = tf.sort(pairs[:, 0] * num_items + pairs[:, 1])
    batch = tf.shape(labels, out_type=tf.int64)[0]
    wanted = tf.range(batch)[:, None] * num_items + sampled[None, :]
    flat = tf.reshape(wanted, [1, -1])
    at = tf.searchsorted(keys[None, :], flat)[0]  # in [0, len(keys)]; the end is a sentinel
    found = tf.gather(tf.concat([keys, tf.constant([-1], tf.int64)], 0), at) == flat[0]
    return tf.reshape(found, tf.shape(wanted))
