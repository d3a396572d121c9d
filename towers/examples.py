"""Next-watch training examples, as in Covington et al. (2016), Sec. 3.4 and Fig. 5b.

Each example predicts a user's watch at position ``p`` of their chronological sequence from the (at
most ``max_history``) watches at positions before ``p``. Nothing at ``p`` or later reaches the
features, so the model never sees its label or the future. Examples per user are capped, so heavy
users do not dominate the loss. Arrays in, arrays out; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from towers.splits import chronological

PAD = ""  # the padding string of history bags; the model's lookup layers mask it


@dataclass(frozen=True)
class Examples:
    """Training examples with raw string IDs.

    Attributes
    ----------
    history : numpy.ndarray of str, shape (n, max_history)
        The items watched before the label, oldest first, left-padded with ``PAD``.
    label : numpy.ndarray of str, shape (n,)
        The item watched next.
    user_id : numpy.ndarray of str, shape (n,)
        Whose example it is (only to join user features; the model has no user-ID input).
    timestamp : numpy.ndarray of int64, shape (n,)
        When the label was watched.
    example_age : numpy.ndarray of float32, shape (n,)
        ``(t_end - t) / (t_end - t_start)`` over the log, in [0, 1], 0 at serving time, where
        ``t`` is the time of the example's position: the label's time for a next watch, the
        event right after the history when the label lies further ahead.
    time_window : tuple of int
        ``(t_start, t_end)`` of the log, to compute example ages at query time.
    sequence : numpy.ndarray of str, shape (n_events,)
        Every user's items in time order, user after user: what ``seen_start`` and
        ``seen_end`` index.
    seen_start, seen_end : numpy.ndarray of int64, shape (n,)
        ``sequence[seen_start:seen_end]`` is everything the example's user watched before the
        example's position (the whole history, not only the bag): the items a request at that
        moment would exclude from its answer.
    """

    history: np.ndarray
    label: np.ndarray
    user_id: np.ndarray
    timestamp: np.ndarray
    example_age: np.ndarray
    time_window: tuple[int, int] = (0, 0)
    sequence: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    seen_start: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    seen_end: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, mask: np.ndarray) -> Examples:
        """The examples where ``mask`` is true."""
        return Examples(
            self.history[mask],
            self.label[mask],
            self.user_id[mask],
            self.timestamp[mask],
            self.example_age[mask],
            self.time_window,
            self.sequence,
            self.seen_start[mask],
            self.seen_end[mask],
        )

    def seen(self, row: int) -> list[str]:
        """What example ``row``'s user had watched before it, oldest first."""
        return self.sequence[self.seen_start[row] : self.seen_end[row]].tolist()


def history_windows(
    codes: np.ndarray, starts: np.ndarray, positions: np.ndarray, max_history: int, pad: int
) -> np.ndarray:
    """Gather for each global position the ``max_history`` codes before it within its user's run.

    Parameters
    ----------
    codes : numpy.ndarray of int, shape (n_events,)
        Item codes of all users' sequences, concatenated user by user.
    starts : numpy.ndarray of int, shape (m,)
        For each requested position, the index in ``codes`` where its user's sequence starts.
    positions : numpy.ndarray of int, shape (m,)
        Global indices into ``codes``; the window ends just before each (exclusive).
    max_history : int
        Window length.
    pad : int
        Code written where the window reaches before the user's first event.

    Returns
    -------
    numpy.ndarray of int, shape (m, max_history)
        Oldest first; padding on the left.
    """
    offsets = np.arange(-max_history, 0)
    idx = positions[:, None] + offsets[None, :]
    valid = idx >= starts[:, None]
    return np.where(valid, codes[np.clip(idx, 0, None)], pad)


def build_examples(
    interactions: pd.DataFrame,
    *,
    max_history: int = 50,
    max_examples_per_user: int | None = 200,
    include_empty_history: bool = True,
    label_horizon: int = 1,
    cold_examples_per_user: int = 0,
    cold_max_history: int = 10,
    seed: int = 0,
    time_window: tuple[int, int] | None = None,
) -> Examples:
    """Build next-watch examples from an interaction log.

    Parameters
    ----------
    interactions : pandas.DataFrame
        Columns ``user_id``, ``item_id``, ``timestamp``; any order (sorted by user, time, item).
    max_history : int
        Length of the watch-history bag.
    max_examples_per_user : int or None
        Cap on examples per user, chosen uniformly at random (seeded) among the user's positions;
        None keeps all.
    include_empty_history : bool
        Whether a user's first watch (with an empty history) is an example. It teaches the model
        what to recommend to a user with nothing watched.
    label_horizon : int
        1 (the paper's next watch) labels each example with the watch at its position. ``h > 1``
        labels it with a watch drawn uniformly from the next ``h`` (within the user's sequence);
        the history still ends before the example's position, so no feature sees the label or
        anything after the position.
    cold_examples_per_user : int
        Extra examples per user that look like a new user's request: the history is the user's
        *first* ``m`` items (``m`` uniform in ``0..cold_max_history``), and the label a watch
        drawn uniformly from all the later ones. Still no feature sees the label or anything
        after the history. 0 (the default) adds none.
    cold_max_history : int
        Longest history of those examples.
    seed : int
        Seed of the per-user subsampling and of the label draw.
    time_window : tuple of int, optional
        ``(t_start, t_end)`` for the example ages; default the log's own first and last
        timestamps. A shard of a larger log passes the whole log's window.

    Returns
    -------
    Examples
    """
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    if max_examples_per_user is not None and max_examples_per_user < 1:
        raise ValueError(f"max_examples_per_user must be >= 1 or None, got {max_examples_per_user}")
    ordered = chronological(interactions)
    items, codes = np.unique(ordered["item_id"].to_numpy(dtype=str), return_inverse=True)
    users = ordered["user_id"].to_numpy(dtype=str)
    times = ordered["timestamp"].to_numpy(dtype=np.int64)
    n = len(ordered)
    # Start index of each event's user run (events are grouped by user after sorting).
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = users[1:] != users[:-1]
    run_start = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    position = np.arange(n) - run_start
    keep = position >= (0 if include_empty_history else 1)
    if max_examples_per_user is not None:
        # A random rank within each user; keep ranks below the cap (uniform subsample).
        rng = np.random.default_rng(seed)
        noise = rng.random(n)
        rank = pd.Series(np.where(keep, noise, np.inf)).groupby(run_start).rank(method="first")
        keep &= rank.to_numpy() <= max_examples_per_user
    chosen = np.flatnonzero(keep)
    label_pos = chosen
    if label_horizon > 1:
        run_end = (
            n
            - 1
            - np.maximum.accumulate(np.where(np.append(new_user[1:], True)[::-1], np.arange(n), 0))[
                ::-1
            ]
        )
        # Uniform over the next min(h, watches left) of the user's own sequence.
        span = np.minimum(label_horizon, run_end[chosen] - chosen + 1)
        draw = np.random.default_rng(seed + 1).random(len(chosen))
        label_pos = chosen + np.minimum((draw * span).astype(np.int64), span - 1)
    pad_code = len(items)
    starts, ends = run_start[chosen], chosen
    if cold_examples_per_user > 0 and n:
        cold_start, cold_end, cold_label = _cold_examples(
            new_user, cold_examples_per_user, cold_max_history, seed
        )
        starts = np.concatenate([starts, cold_start])
        ends = np.concatenate([ends, cold_end])
        label_pos = np.concatenate([label_pos, cold_label])
    windows = history_windows(codes, starts, ends, max_history, pad_code)
    vocab = np.append(items, PAD).astype(object)
    if time_window is not None:
        t_start, t_end = int(time_window[0]), int(time_window[1])
    else:
        t_start, t_end = (int(times.min()), int(times.max())) if n else (0, 0)
    return Examples(
        history=vocab[windows],
        label=items[codes[label_pos]].astype(object),
        user_id=users[label_pos].astype(object),
        timestamp=times[label_pos],
        # The request's time is the example's position (the event right after its history),
        # not a later label's: with a label horizon or a new-user example the label may lie
        # further ahead, and its time would tell the features when it was watched.
        example_age=example_age(times[ends], (t_start, t_end)),
        time_window=(t_start, t_end),
        sequence=items[codes].astype(object),
        seen_start=starts.astype(np.int64),
        seen_end=ends.astype(np.int64),
    )


def _cold_examples(
    new_user: np.ndarray, per_user: int, max_history: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window starts, window ends (exclusive) and label positions of ``per_user`` new-user
    examples per user run: the first ``m`` events, and a later event as the label."""
    starts = np.flatnonzero(new_user)
    lengths = np.diff(np.append(starts, len(new_user)))
    starts, lengths = starts[lengths > 1], lengths[lengths > 1]  # a label needs a later event
    rng = np.random.default_rng(seed + 2)
    start = np.repeat(starts, per_user)
    length = np.repeat(lengths, per_user)
    m = rng.integers(0, np.minimum(max_history, length - 1) + 1)
    label = start + m + rng.integers(0, length - m)
    return start, start + m, label


def example_age(timestamps: np.ndarray, time_window: tuple[int, int]) -> np.ndarray:
    """``(t_end - t) / (t_end - t_start)``, float32: 0 at the end of the training window ("now" at
    serving time), 1 at its start (Covington et al. 2016, Sec. 3.3)."""
    t_start, t_end = time_window
    span = max(t_end - t_start, 1)
    return ((t_end - np.asarray(timestamps, dtype=np.float64)) / span).astype(np.float32)


def latest_histories(interactions: pd.DataFrame, max_history: int = 50) -> dict[str, list[str]]:
    """Each user's last ``max_history`` watched items, oldest first: the serving-time query bag."""
    ordered = chronological(interactions)
    return {
        str(user): group.tolist()[-max_history:]
        for user, group in ordered.groupby("user_id", sort=False)["item_id"]
    }


def pad_histories(histories: list[list[str]], max_history: int) -> np.ndarray:
    """Left-pad (and keep the newest ``max_history`` of) each history into a string matrix."""
    out = np.full((len(histories), max_history), PAD, dtype=object)
    for row, history in enumerate(histories):
        tail = [str(i) for i in history[-max_history:]] if max_history else []
        if tail:
            out[row, max_history - len(tail) :] = tail
    return out
