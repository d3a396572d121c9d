"""The evaluation splits of ``PROTOCOLS.md``: deterministic, byte for byte, on every machine.

* ``temporal-user-20``: each user's last ``(n + 4) // 5`` interactions (by timestamp, then item ID)
  are test.
* ``leave-last-one``: each user's last interaction is test.
* ``random-80-20``: ``numpy.random.default_rng(42).permutation(n)`` of the rating rows in file
  order; the first 80 % are train.
* ``ml100k-folds``: GroupLens' ``u1..u5.base/test``.
* ``tfrs-80-20``: ml-100k's ``u.data`` rows permuted with ``default_rng(42)``; 80,000 train,
  20,000 test.

For the per-user temporal splits, test items that never occur in train are dropped from test and
counted (they are cold items, measured by the cold-item protocol instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from towers.movielens import read_100k_ratings

SPLITS = ("temporal-user-20", "leave-last-one", "random-80-20", "ml100k-folds", "tfrs-80-20")


@dataclass(frozen=True)
class Split:
    """A train/test pair of interaction frames.

    Attributes
    ----------
    protocol : str
        The protocol name from ``PROTOCOLS.md``.
    train, test : pandas.DataFrame
        Interaction frames with the :class:`towers.data.Dataset` columns.
    cold_test_dropped : int
        Test rows dropped because their item never occurs in train.
    """

    protocol: str
    train: pd.DataFrame
    test: pd.DataFrame
    cold_test_dropped: int = 0


def item_sort_key(item_ids: pd.Series) -> pd.Series:
    """Sort key for item IDs: numeric when every ID is a number (MovieLens), else the string."""
    numeric = pd.to_numeric(item_ids, errors="coerce")
    return numeric if numeric.notna().all() else item_ids.astype(str)


def chronological(frame: pd.DataFrame) -> pd.DataFrame:
    """Sort interactions by (user_id, timestamp, item ID), with item IDs compared as numbers if
    they all are. Returns a frame with a fresh index."""
    keyed = frame.assign(_item_key=item_sort_key(frame["item_id"]))
    keyed = keyed.sort_values(["user_id", "timestamp", "_item_key"], kind="stable")
    return keyed.drop(columns="_item_key").reset_index(drop=True)


def _drop_cold(protocol: str, train: pd.DataFrame, test: pd.DataFrame) -> Split:
    known = test["item_id"].isin(set(train["item_id"]))
    return Split(
        protocol,
        train.reset_index(drop=True),
        test[known].reset_index(drop=True),
        int((~known).sum()),
    )


def per_user_tail(frame: pd.DataFrame, protocol: str) -> Split:
    """Split each user's chronological sequence into a head (train) and tail (test).

    Parameters
    ----------
    frame : pandas.DataFrame
        Interactions.
    protocol : {"temporal-user-20", "leave-last-one"}
        ``temporal-user-20`` puts the last ``(n + 4) // 5`` of a user's ``n`` interactions in test
        (integer ceil of n/5; ``math.ceil(0.2 * n)`` is off by one at n = 15), ``leave-last-one``
        the last one.

    Returns
    -------
    Split
    """
    if protocol not in ("temporal-user-20", "leave-last-one"):
        raise ValueError(
            f"protocol must be 'temporal-user-20' or 'leave-last-one', got {protocol!r}"
        )
    ordered = chronological(frame)
    n = ordered.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
    position = ordered.groupby("user_id", sort=False).cumcount().to_numpy()
    n_test = (n + 4) // 5 if protocol == "temporal-user-20" else np.ones_like(n)
    is_test = position >= n - n_test
    return _drop_cold(protocol, ordered[~is_test], ordered[is_test])


def random_80_20(frame: pd.DataFrame, seed: int = 42) -> Split:
    """The fastai protocol: a seeded permutation of the rows in file order, first 80 % train."""
    order = np.random.default_rng(seed).permutation(len(frame))
    cut = int(0.8 * len(frame))
    return Split(
        "random-80-20",
        frame.iloc[order[:cut]].reset_index(drop=True),
        frame.iloc[order[cut:]].reset_index(drop=True),
    )


def tfrs_80_20(frame: pd.DataFrame, seed: int = 42) -> Split:
    """The TFRS basic-retrieval tutorial's protocol: seed-42 shuffle, 80,000 train, 20,000 test.

    ``frame`` must be ml-100k's 100,000 ratings in ``u.data`` order.
    """
    if len(frame) != 100_000:
        raise ValueError(f"tfrs-80-20 needs ml-100k's 100,000 ratings, got {len(frame)} rows")
    order = np.random.default_rng(seed).permutation(len(frame))
    return Split(
        "tfrs-80-20",
        frame.iloc[order[:80_000]].reset_index(drop=True),
        frame.iloc[order[80_000:]].reset_index(drop=True),
    )


def ml100k_fold(folder: str | Path, fold: int) -> Split:
    """GroupLens' official fold ``u{fold}.base`` / ``u{fold}.test`` from the ml-100k folder."""
    if fold not in range(1, 6):
        raise ValueError(f"fold must be 1..5, got {fold}")
    folder = Path(folder)
    return Split(
        "ml100k-folds",
        read_100k_ratings(folder / f"u{fold}.base"),
        read_100k_ratings(folder / f"u{fold}.test"),
    )


def make_split(frame: pd.DataFrame, protocol: str) -> Split:
    """Dispatch by protocol name for the protocols that need only the interaction frame."""
    if protocol in ("temporal-user-20", "leave-last-one"):
        return per_user_tail(frame, protocol)
    if protocol == "random-80-20":
        return random_80_20(frame)
    if protocol == "tfrs-80-20":
        return tfrs_80_20(frame)
    raise ValueError(
        f"protocol must be one of {SPLITS[:3] + SPLITS[4:]} (use ml100k_fold for ml100k-folds), "
        f"got {protocol!r}"
    )
