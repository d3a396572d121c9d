"""The service's bag of history items, computed in the graph, for the SavedModels.

A request's ``history`` is a string ``[batch, n]`` row per user, oldest first, with ``""`` pads
anywhere and unknown IDs. As the Python API (``serving.api``), a repeated item counts once, at
its last position, and the newest known items form the bag: :func:`distinct_known` finds those
positions and :func:`compact` moves them right, left-padded.
"""

from __future__ import annotations

import numpy as np

from towers._tf import tf

NO_ITEM_SCORE = float(np.finfo(np.float32).min)


def distinct_known(history: tf.Tensor, known: tf.Tensor) -> tf.Tensor:
    """The known items of each row less those repeated later in it.

    Parameters
    ----------
    history : tf.Tensor
        String ``[batch, n]``, oldest first.
    known : tf.Tensor
        Bool ``[batch, n]``: which positions hold a known item (never a pad).

    Returns
    -------
    tf.Tensor
        Bool ``[batch, n]``: ``known`` without every position whose item appears again, known,
        at a later position of its row, so a repeated item counts once, at its last position
        (as ``towers.catalogue.distinct_history``).
    """
    # Linear in the batch's size (one hash pass), not quadratic in the history length: key each
    # position by (row, item), find every key's last known position, keep a known position
    # only where it is its key's last.
    batch, n = tf.shape(history)[0], tf.shape(history)[1]
    rows = tf.strings.as_string(tf.repeat(tf.range(batch)[:, None], n, axis=1))
    keys = tf.reshape(tf.strings.join([rows, history], separator="\x1f"), [-1])
    _, segment = tf.unique(keys)
    position = tf.reshape(tf.tile(tf.range(n)[None, :], [batch, 1]), [-1])
    flat_known = tf.reshape(known, [-1])
    last = tf.math.unsorted_segment_max(
        tf.where(flat_known, position, -1), segment, num_segments=tf.size(keys)
    )
    is_last = tf.equal(position, tf.gather(last, segment))
    return known & tf.reshape(is_last, [batch, n])


def compact(values: tf.Tensor, keep: tf.Tensor, width: int, pad) -> tf.Tensor:
    """The kept ``values`` of each row moved right in order, the newest ``width`` of them.

    Parameters
    ----------
    values : tf.Tensor
        ``[batch, n]``, oldest first (history items, or values aligned with them).
    keep : tf.Tensor
        Bool ``[batch, n]``.
    width : int
        Columns of the result.
    pad
        The value of the dropped positions and of the left padding.

    Returns
    -------
    tf.Tensor
        ``[batch, width]``, left-padded with ``pad``. Rows compacted with the same ``keep``
        stay aligned.
    """
    order = tf.argsort(tf.cast(keep, tf.int32), axis=1, stable=True)  # dropped ones first
    values = tf.gather(tf.where(keep, values, pad), order, batch_dims=1)
    values = values[:, tf.maximum(tf.shape(values)[1] - width, 0) :]
    return tf.pad(values, [[0, 0], [width - tf.shape(values)[1], 0]], constant_values=pad)
