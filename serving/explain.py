"""Explanations, "because you watched ...": which watched item contributed most to an item.

The user vector is a nonlinear function of the history bag, so a linear attribution would not
be exact. The explanation is therefore measured, by leave-one-out: for each item ``h`` in the
bag, the user vector is recomputed without ``h``, and the logit drop of a recommended item ``i``
is

    drop(h, i) = (u(H) - u(H \\ {h})) . w_i

(the bias cancels). The explanation of ``i`` is the ``h`` with the largest drop, or none when no
watched item raised ``i``'s logit (it is recommended for the user's features or popularity). All
bag variants go through the encoder as one batch: ``m + 1`` rows for ``m`` bag items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from serving.api import Recommender


def leave_one_out_drops(queries: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """Logit drops ``[m, n]`` from a full query (row 0 of ``queries``, shape ``(m + 1, d)``) and
    ``m`` leave-one-out queries (rows 1..m), for ``n`` item vectors ``(n, d)``."""
    logits = queries @ item_vectors.T
    return logits[0][None, :] - logits[1:]


def because(
    recommender: Recommender,
    history: Sequence[str],
    features: Mapping[str, object],
    item_ids: Sequence[str],
) -> list[str | None]:
    """For each of ``item_ids``, the watched item whose removal lowers its logit most.

    Parameters
    ----------
    recommender : Recommender
    history : sequence of str
        The user's watched items, oldest first (unknown IDs are ignored, as in ``recommend``).
    features : mapping
        Demographics, as given to ``recommend``.
    item_ids : sequence of str
        Recommended (indexed) items.

    Returns
    -------
    list of (str or None)
        One entry per item: a history item ID, or None when no watched item raised its score.
    """
    # The generator that answered this history (the new-user tower for a short one).
    generator = recommender.generator(len(recommender.retriever.encoder.split_known(history)[0]))
    encoder = generator.encoder
    window = encoder.max_history
    known = encoder.known_tail(history, window + 1)  # the bag and the item just before it
    m = min(len(known), window)
    if m == 0 or not item_ids:
        return [None] * len(item_ids)
    # Lookup positions of the bag and of the item just before it, if any: leaving bag item j
    # out lets that item back into the window, as a shorter history would.
    tail = encoder.item_positions(np.array(known[-(window + 1) :], dtype=object))
    before, bag = tail[:-m], tail[-m:]
    rows = np.zeros((m + 1, window), np.int64)  # 0 is the padding position
    rows[0, window - m :] = bag
    without = np.broadcast_to(bag, (m, m))[~np.eye(m, dtype=bool)].reshape(m, m - 1)
    if len(before):
        without = np.concatenate([np.repeat(before[None, :], m, axis=0), without], axis=1)
    if without.shape[1]:
        rows[1:, window - without.shape[1] :] = without
    inputs = recommender.encoder_inputs([[]] * (m + 1), [features] * (m + 1), window)
    users = encoder.from_positions(rows, inputs)
    index = generator.index
    vectors = index.vectors(item_ids)[:, :-1]  # the bias cancels in a drop
    drops = leave_one_out_drops(users, vectors)
    best = np.argmax(drops, axis=0)
    bag_ids = known[-m:]
    return [bag_ids[b] if drops[b, n] > 0 else None for n, b in enumerate(best)]
