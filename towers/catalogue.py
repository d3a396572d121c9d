"""What an artefact knows about its items and users, for serving and batch export.

``items.parquet`` holds the item metadata (ID, title, year, genres) that results carry and filters
use. ``users.parquet`` is a *user table*: one row per user with the full watch history (oldest
first, every item, so that seen items can be excluded) and demographics where the data has them.
The batch exporter also reads user tables that a caller writes (e.g. a synthetic population).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from towers.data import Dataset
from towers.features import DEMOGRAPHIC_COLUMNS
from towers.splits import chronological

ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"
STATS = ("rating_count", "rating_mean", "last_timestamp")


def user_table(interactions: pd.DataFrame, users: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per user: ``user_id``, ``history`` (list of item IDs, oldest first),
    ``rating_count``, ``rating_mean``, ``last_timestamp`` and, when ``users`` is given, ``age``
    and the categorical demographics (missing ones as NaN / "")."""
    ordered = chronological(interactions)
    grouped = ordered.groupby("user_id", sort=True)
    table = pd.DataFrame(
        {
            "user_id": grouped.size().index.astype(str),
            "history": grouped["item_id"].agg(list).to_numpy(),
            "rating_count": grouped.size().to_numpy(np.float64),
            "rating_mean": grouped["rating"].mean().to_numpy(np.float64),
            "last_timestamp": grouped["timestamp"].max().to_numpy(np.float64),
        }
    )
    if users is not None and not users.empty:
        demo = users.set_index("user_id").reindex(table["user_id"])
        table["age"] = demo["age"].to_numpy(dtype=np.float32)
        for col in DEMOGRAPHIC_COLUMNS:
            table[col] = demo[col].fillna("").astype(str).to_numpy()
    return table


def save_catalogue(directory: str | Path, data: Dataset) -> None:
    """Write ``items.parquet`` and ``users.parquet`` for ``data`` into an artefact directory."""
    directory = Path(directory)
    items = data.items[["item_id", "title", "year", "genres"]].copy()
    items["genres"] = items["genres"].map(list)
    counts = data.interactions["item_id"].astype(str).value_counts()
    items["popularity"] = counts.reindex(items["item_id"].astype(str)).fillna(0).to_numpy()
    items.to_parquet(directory / ITEMS_FILE, index=False)
    user_table(data.interactions, data.users).to_parquet(directory / USERS_FILE, index=False)


def complete_catalogue(items: pd.DataFrame | None, item_ids: Sequence[str]) -> pd.DataFrame:
    """The catalogue ``items``, with a row (titled by its ID) for every item of the index that
    it lacks: an artefact trained before watched items without metadata were given rows would
    otherwise recommend items that no lookup, search or event could name."""
    known = set() if items is None else set(items["item_id"].astype(str))
    missing = [str(i) for i in item_ids if str(i) not in known]
    if not missing:
        return items
    rows = pd.DataFrame({"item_id": missing, "title": missing, "genres": [()] * len(missing)})
    return rows if items is None else pd.concat([items, rows], ignore_index=True)


def genre_names(genres: object) -> tuple[str, ...]:
    """An item's genres as a tuple of text. Parquet's list column arrives as a numpy object array
    per item, which ``tolist()`` turns into Python strings at once (iterating the array element
    by element took about 6 times as long over ml-latest-small's 9,742 items)."""
    if isinstance(genres, np.ndarray):
        genres = genres.tolist()
    return tuple(map(str, genres))


def check_history_type(kind: pa.DataType) -> None:
    """Refuse a ``history`` column that is not a list of item IDs (strings, or integers, which
    are read as their decimal strings): a plain string such as ``"12|13|30"`` would otherwise be
    read one character at a time."""
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        raise ValueError(
            f"user table column 'history' must be a list of item IDs (list<string>), got "
            f"{kind}; write each history as a list, e.g. ['12', '13', '30']"
        )
    value = kind.value_type
    if not (
        pa.types.is_string(value) or pa.types.is_large_string(value)
        or pa.types.is_integer(value) or pa.types.is_null(value)
    ):  # fmt: skip
        raise ValueError(f"user table column 'history' must hold string item IDs, got {kind}")


def distinct_history(history: Sequence[object]) -> list[str]:
    """``history`` (oldest first) as text, each repeated item kept at its last position only,
    as a stored user's history is folded (:mod:`serving.histories`): the same watches give the
    same recommendations whether they come from the store, a user table or a request."""
    return list(dict.fromkeys(str(i) for i in reversed(history)))[::-1]


def _fold_text(history: list[str]) -> list[str]:
    """:func:`distinct_history` of a list that holds only ``str``."""
    return list(dict.fromkeys(reversed(history)))[::-1]


class UserTable:
    """Histories and demographics by raw user ID, kept in Arrow (compact for millions of users).

    Parameters
    ----------
    table : pyarrow.Table or pandas.DataFrame
        ``user_id``, ``history`` (list of str, oldest first), optional demographics columns.

    Raises
    ------
    ValueError
        If a column is missing, ``history`` is not a list column, or a user ID is null or
        repeats.
    """

    def __init__(self, table: pa.Table | pd.DataFrame) -> None:
        if isinstance(table, pd.DataFrame):
            table = pa.Table.from_pandas(table, preserve_index=False)
        missing = {"user_id", "history"} - set(table.column_names)
        if missing:
            raise ValueError(f"user table lacks columns {sorted(missing)}")
        check_history_type(table.schema.field("history").type)
        user_ids = table.column("user_id")
        if user_ids.null_count:
            row = pc.index(pc.is_null(user_ids), True).as_py()
            raise ValueError(
                f"user table has {user_ids.null_count} null user_id(s), the first in row {row} "
                "(counting from 0); every row needs a user ID"
            )
        ids = pd.Index(user_ids.cast(pa.string()).to_pandas())
        if ids.has_duplicates:
            raise ValueError(f"user table repeats user ids, e.g. {ids[ids.duplicated()][0]!r}")
        self.table = table
        self._row = ids
        self._row_of = {u: i for i, u in enumerate(ids.tolist())}
        self._history = table.column("history")
        # Histories of text IDs with no null entry are folded without converting each ID.
        values = pc.list_flatten(self._history)
        self._text_ids = (
            pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
        ) and values.null_count == 0
        self.has_demographics = all(c in table.column_names for c in ("age", *DEMOGRAPHIC_COLUMNS))
        self.has_stats = all(c in table.column_names for c in STATS)
        self._stats = {
            c: table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
            for c in (STATS if self.has_stats else ())
        }
        if self.has_demographics:
            self._age = table.column("age").to_numpy().astype(np.float32)
            self._demo = {
                c: table.column(c).to_numpy(zero_copy_only=False).astype(object)
                for c in DEMOGRAPHIC_COLUMNS
            }

    @classmethod
    def read(cls, path: str | Path) -> UserTable:
        """Read a user table from Parquet.

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        ValueError
            If the table is not a valid user table (the message names ``path``).
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"user table {path} does not exist")
        try:
            return cls(pq.read_table(path))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, user_id: object) -> bool:
        return str(user_id) in self._row_of

    @property
    def user_ids(self) -> list[str]:
        return self._row.tolist()

    def rows(self, user_ids: Sequence[str]) -> np.ndarray:
        """Row of each user, -1 for unknown users."""
        get = self._row_of.get
        return np.fromiter((get(str(u), -1) for u in user_ids), np.int64, len(user_ids))

    def histories(self, rows: np.ndarray) -> list[list[str]]:
        """Histories of table ``rows`` (an unknown user's row -1 gives ``[]``), a repeated item
        kept at its last position only (:func:`distinct_history`), as the service folds a
        stored user's events."""
        rows = np.asarray(rows)
        valid = rows >= 0
        if len(rows) == 1:  # a request's one user: a scalar read is a third of a take's time
            taken = [self._history[int(rows[0])].as_py() if valid[0] else None]
        else:
            taken = self._history.take(pa.array(np.where(valid, rows, 0))).to_pylist()
        fold = _fold_text if self._text_ids else distinct_history
        return [fold(h) if ok and h else [] for h, ok in zip(taken, valid, strict=True)]

    def stats(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """``rating_count``, ``rating_mean`` and ``last_timestamp`` of table ``rows`` (NaN for
        unknown users, or when the table does not have them)."""
        rows = np.asarray(rows)
        if not self.has_stats:
            return {c: np.full(len(rows), np.nan) for c in STATS}
        return {
            c: np.where(rows >= 0, v[np.maximum(rows, 0)], np.nan) for c, v in self._stats.items()
        }

    def demographics(self, rows: np.ndarray) -> dict[str, np.ndarray] | None:
        """Demographic columns of table ``rows`` (unknown users: NaN age, ``""``), or None."""
        if not self.has_demographics:
            return None
        rows = np.asarray(rows)
        valid = rows >= 0
        take = np.where(valid, rows, 0)
        out: dict[str, np.ndarray] = {
            "age": np.where(valid, self._age[take], np.nan).astype(np.float32)
        }
        for col in DEMOGRAPHIC_COLUMNS:
            out[col] = np.where(valid, self._demo[col][take], "").astype(object)
        return out
