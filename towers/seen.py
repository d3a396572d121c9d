"""What each training example's user had already watched: the ``seen`` input of ``mask_seen``.

Example ``e``'s user had watched ``rows[seen_start[e]:seen_end[e]]`` (softmax rows of the log in
chronological order, :attr:`towers.examples.Examples.sequence`). Every such range starts where its
user's run starts, so a batch's seen items reach the loss (:mod:`towers.losses`) in one of two
forms:

- **pairs**, ``(example, softmax row)``, int64 ``(k, 2)`` (:func:`with_seen`): any size of data,
  but a batch of 512 examples on ml-latest-small lists about 125,000 pairs once heavy users keep
  all their examples, and scattering them into the batch's softmax costs about a quarter of a step;
- a **mask**, bool ``(batch, num_items)`` (:func:`with_seen_mask`), from a table of the offset at
  which each user run first watched each item (:func:`first_watch_table`): item ``i`` was seen by
  example ``e`` when ``table[run(e), i] < seen_end[e] - seen_start[e]``. One row gather and a
  comparison per batch, whatever the histories' lengths; the table has ``runs x num_items`` cells,
  so it is used up to :data:`DENSE_SEEN_MAX_CELLS`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from towers._tf import tf
from towers.examples import Examples

# 64 Mi cells: 128 MiB at int16. ml-latest-small's 610 users x 9,742 items is 5.9 Mi.
DENSE_SEEN_MAX_CELLS = 1 << 26


def seen_rows(examples: Examples, item_ids: Sequence[str]) -> np.ndarray:
    """The softmax row of each item of ``examples.sequence`` (-1 for an item the model does
    not have), int64: what :func:`with_seen` gathers each example's seen items from."""
    return pd.Index(item_ids).get_indexer(examples.sequence).astype(np.int64)


def seen_pairs(rows: np.ndarray, seen_start: np.ndarray, seen_end: np.ndarray) -> np.ndarray:
    """``(e, r)`` for each ``r`` of ``rows[seen_start[e]:seen_end[e]]`` that is ``>= 0``, int64
    ``(k, 2)``: the pairs of :func:`with_seen`, in numpy, for a batch built outside tf.data
    (:mod:`towers.stream`'s generator)."""
    lengths = seen_end - seen_start
    owner = np.repeat(np.arange(len(seen_start)), lengths)
    at = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    pairs = np.stack([owner, rows[np.repeat(seen_start, lengths) + at]], axis=1).astype(np.int64)
    return pairs[pairs[:, 1] >= 0]


def with_seen(ds: tf.data.Dataset, rows: np.ndarray) -> tf.data.Dataset:
    """Add to each batch of ``ds`` (whose inputs carry ``seen_start`` and ``seen_end``) the
    input ``seen``: the ``(example, softmax row)`` pairs of ``rows[seen_start:seen_end]``, int64
    ``(k, 2)``, without the items the model does not have. The ranges travel through the
    shuffle as two integers per example, and become pairs batch by batch."""
    table = tf.constant(rows)

    def expand(inputs: dict, labels: tf.Tensor) -> tuple[dict, tf.Tensor]:
        inputs = dict(inputs)
        ranges = tf.ragged.range(inputs.pop("seen_start"), inputs.pop("seen_end"))
        pairs = tf.stack([ranges.value_rowids(), tf.gather(table, ranges.flat_values)], axis=1)
        inputs["seen"] = tf.boolean_mask(pairs, pairs[:, 1] >= 0)
        return inputs, labels

    return ds.map(expand, num_parallel_calls=tf.data.AUTOTUNE)


def first_watch_table(
    rows: np.ndarray, seen_start: np.ndarray, seen_end: np.ndarray, num_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """The offset within each user run at which the run first watched each item.

    Parameters
    ----------
    rows : numpy.ndarray of int, shape (n,)
        Softmax row of each event of the chronological log; -1 for an item the model lacks.
    seen_start, seen_end : numpy.ndarray of int, shape (examples,)
        Each example's seen range ``[seen_start, seen_end)`` of ``rows``; ``seen_start`` is
        where the example's user run starts.
    num_items : int
        Softmax rows.

    Returns
    -------
    table : numpy.ndarray, shape (runs, num_items)
        int16 (int32 for runs of 32,767 events or more): the first offset, or the dtype's
        maximum for an item the run did not watch before its last example's range ends.
    run : numpy.ndarray of int32, shape (examples,)
        Each example's row of ``table``.
    """
    seen_start = np.asarray(seen_start, np.int64)
    seen_end = np.asarray(seen_end, np.int64)
    if len(seen_start) and (seen_end < seen_start).any():
        raise ValueError("every seen_end must be >= its seen_start")
    starts, run = np.unique(seen_start, return_inverse=True)
    ends = np.zeros(len(starts), np.int64)
    np.maximum.at(ends, run, seen_end)
    longest = int((ends - starts).max()) if len(starts) else 0
    dtype = np.int16 if longest < np.iinfo(np.int16).max else np.int32
    table = np.full((len(starts), num_items), np.iinfo(dtype).max, dtype)
    lengths = ends - starts
    event_run = np.repeat(np.arange(len(starts)), lengths)
    offset = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    row = rows[np.repeat(starts, lengths) + offset]
    known = row >= 0
    np.minimum.at(table, (event_run[known], row[known]), offset[known].astype(dtype))
    return table, run.astype(np.int32)


def with_seen_mask(ds: tf.data.Dataset, table: np.ndarray) -> tf.data.Dataset:
    """Add to each batch of ``ds`` (whose inputs carry ``seen_run``, the example's row of
    ``table``, and ``seen_length``, ``seen_end - seen_start``) the input ``seen``: a bool
    ``(batch, num_items)`` mask of the items the example's user had watched (see
    :func:`first_watch_table`)."""
    first = tf.constant(table)

    def expand(inputs: dict, labels: tf.Tensor) -> tuple[dict, tf.Tensor]:
        inputs = dict(inputs)
        length = tf.cast(inputs.pop("seen_length"), first.dtype)
        inputs["seen"] = tf.gather(first, inputs.pop("seen_run")) < length[:, None]
        return inputs, labels

    return ds.map(expand, num_parallel_calls=tf.data.AUTOTUNE)
