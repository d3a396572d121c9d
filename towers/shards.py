"""Reading Parquet interaction shards: the one-pass scan, one shard, all of them in memory.

Each shard holds whole users (as :mod:`towers.synthetic` writes them, or any log cut by user).
:func:`scan_shards` reads only the item, user and time columns to build the vocabulary, the
sampling frequencies, the time window and the epoch size; :func:`read_shard` reads one shard for
the example builder. Streaming training over them is :mod:`towers.stream`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from towers.data import Dataset, split_list

if TYPE_CHECKING:
    from towers.model import TowerConfig

_COLUMNS = ["user_id", "item_id", "timestamp"]


@dataclass(frozen=True)
class ShardScan:
    """What one pass over the shards learned.

    Attributes
    ----------
    paths : list of str
    item_ids : list of str
        The vocabulary, most frequent first (ties by ID), as :func:`towers.train.build_tower`.
    item_counts : numpy.ndarray of float64
    time_window : tuple of int
    users, events : int
    examples : int
        Next-watch examples per epoch under the config's per-user cap.
    """

    paths: list[str]
    item_ids: list[str]
    item_counts: np.ndarray
    time_window: tuple[int, int]
    users: int
    events: int
    examples: int


def scan_shards(paths: Sequence[str | Path], config: TowerConfig) -> ShardScan:
    """One pass over ``paths`` reading only the ID and time columns.

    Empty shards are skipped. IDs are read as text, as :func:`read_shard` reads them. (Each
    user's events are expected in one shard, as ``generate-synthetic`` writes them; a user
    split over shards is trained without their history from the other shards.)

    Raises
    ------
    ValueError
        If there are no shards, a shard lacks a column, or every shard is empty.
    """
    if not paths:
        raise ValueError("paths is empty: there are no shards to train on")
    counts: pd.Series | None = None
    t_min, t_max, users, events, examples = None, None, 0, 0, 0
    cap = config.max_examples_per_user
    kept = []
    for path in paths:
        try:
            table = pq.read_table(path, columns=_COLUMNS)
        except (KeyError, ValueError, OSError) as exc:
            raise ValueError(f"shard {path} lacks one of the columns {_COLUMNS}: {exc}") from exc
        _check_types(table.schema, path)
        if table.num_rows == 0:
            continue  # left out of the paths too: a worker must never get only empty shards
        kept.append(str(path))
        ids = {c: pc.cast(table.column(c), pa.string()) for c in ("item_id", "user_id")}
        if any(v.null_count for v in ids.values()) or table.column("timestamp").null_count:
            raise ValueError(f"shard {path} has missing user IDs, item IDs or timestamps")
        for column, values in ids.items():
            if pc.any(pc.equal(pc.utf8_trim_whitespace(values), "")).as_py():
                raise ValueError(f"shard {path} has blank values in {column}")
        vc = pc.value_counts(ids["item_id"]).flatten()
        shard_counts = pd.Series(vc[1].to_numpy(), index=vc[0].to_numpy(zero_copy_only=False))
        counts = shard_counts if counts is None else counts.add(shard_counts, fill_value=0)
        per_user = pc.value_counts(ids["user_id"]).flatten()[1].to_numpy()
        users += len(per_user)
        events += table.num_rows
        examples += int(np.minimum(per_user, cap).sum() if cap else per_user.sum())
        examples += config.cold_examples_per_user * int((per_user > 1).sum())
        lo, hi = pc.min_max(table.column("timestamp")).values()
        t_min = lo.as_py() if t_min is None else min(t_min, lo.as_py())
        t_max = hi.as_py() if t_max is None else max(t_max, hi.as_py())
    if counts is None:
        raise ValueError(f"all {len(paths)} shard(s) are empty: there is nothing to train on")
    order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ShardScan(
        kept,
        [str(i) for i, _ in order],
        np.array([c for _, c in order], dtype=np.float64),
        (int(t_min), int(t_max)),
        users,
        events,
        examples,
    )


def metadata_lists(items: pd.DataFrame | None) -> pd.DataFrame | None:
    """``items`` with ``genres`` and ``tags`` as lists of str: a null cell is an empty list and
    a ``|``-separated text cell is split (as the file loaders read them)."""
    if items is None:
        return None
    items = items.copy()
    for column in ("genres", "tags"):
        if column in items:
            items[column] = items[column].map(split_list)
    return items


def _check_types(schema: pa.Schema, path: object) -> None:
    """IDs as text or integers (a float ID reads as "7.0" in one place and "7" in another) and
    timestamps as integer epoch seconds, named by shard."""
    for column in ("user_id", "item_id"):
        kind = schema.field(column).type
        if not (pa.types.is_integer(kind) or pa.types.is_string(kind)
                or pa.types.is_large_string(kind)):  # fmt: skip
            raise ValueError(f"shard {path}: {column} must be text or integers, got {kind}")
    kind = schema.field("timestamp").type
    if not pa.types.is_integer(kind):
        raise ValueError(f"shard {path}: timestamp must be integer epoch seconds, got {kind}")


def read_shard(path: str | Path) -> pd.DataFrame:
    """One shard as an interaction frame (``rating`` NaN when the shard has none)."""
    table = pq.read_table(path)
    frame = table.select([c for c in (*_COLUMNS, "rating") if c in table.column_names]).to_pandas()
    frame["user_id"] = frame["user_id"].astype(str)
    frame["item_id"] = frame["item_id"].astype(str)
    if "rating" not in frame:
        frame["rating"] = np.nan
    return frame


def shards_dataset(paths: Sequence[str | Path], items: pd.DataFrame | None = None) -> Dataset:
    """All shards read into one in-memory :class:`towers.data.Dataset` (small worlds only:
    evaluation on a split, tests)."""
    frame = pd.concat([read_shard(p) for p in paths], ignore_index=True)
    if items is None:
        items = pd.DataFrame(
            {"item_id": sorted(frame["item_id"].unique()), "title": "", "year": np.nan}
        )
        items["genres"] = [[] for _ in range(len(items))]
        items["tags"] = [[] for _ in range(len(items))]
    return Dataset("shards", frame, items, None, "")
