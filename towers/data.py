"""Interaction logs, item and user metadata: containers, validation and the generic file loader.

Every loader returns a :class:`Dataset` with raw string IDs. Mapping IDs to indices happens inside
the model (Keras lookup layers), never here.

Duplicate policy: rows that repeat the same (user, item, timestamp) are one event seen twice. The
*last* row in file order is kept (a later correction wins) and the number dropped is logged. The
same (user, item) at *different* timestamps are separate events (re-watches) and are all kept.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
ITEM_COLUMNS = ("item_id", "title", "year", "genres", "tags")
USER_COLUMNS = ("user_id", "age", "gender", "occupation", "zip_prefix")
_YEAR = re.compile(r"\((\d{4})\)\s*$")


class DataError(ValueError):
    """A data file is missing, empty or malformed. The message names the file, column and a row."""


@dataclass(frozen=True)
class Dataset:
    """An interaction log with optional metadata, all keyed by raw string IDs.

    Attributes
    ----------
    name : str
        Short name, e.g. ``"ml-latest-small"``.
    interactions : pandas.DataFrame
        Columns ``user_id`` (str), ``item_id`` (str), ``rating`` (float64, NaN when the log has
        none) and ``timestamp`` (int64 seconds since the epoch), in file order (the splits in
        :mod:`towers.splits` sort as their protocol says).
    items : pandas.DataFrame
        Columns ``item_id`` (str), ``title`` (str), ``year`` (float64, NaN if unknown), ``genres``
        and ``tags`` (lists of str). One row per item; may list items with no interactions.
    users : pandas.DataFrame or None
        Columns ``user_id`` (str), ``age`` (float64), ``gender``, ``occupation``, ``zip_prefix``
        (str), when the dataset has demographics.
    checksum : str
        SHA-256 over the source files, recorded in every artefact trained on this data.
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None
    checksum: str

    @property
    def num_users(self) -> int:
        return int(self.interactions["user_id"].nunique())

    @property
    def num_items(self) -> int:
        return int(self.interactions["item_id"].nunique())

    def with_interactions(self, interactions: pd.DataFrame) -> Dataset:
        """Return a copy that keeps the metadata but uses another interaction log (e.g. a split)."""
        return Dataset(self.name, interactions, self.items, self.users, self.checksum)


def file_checksum(paths: Sequence[Path]) -> str:
    """SHA-256 over the bytes of ``paths`` in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _example_row(frame: pd.DataFrame, mask: np.ndarray | pd.Series) -> str:
    bad = frame[np.asarray(mask)]
    return (
        ""
        if bad.empty
        else f"; first bad row (line {int(bad.index[0]) + 2}): {bad.iloc[0].to_dict()}"
    )


def _read_table(path: Path, sep: str | None = None) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep=sep or ",", dtype=str, keep_default_na=False)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot be read as a table: {exc}") from exc
    if frame.empty:
        raise DataError(f"{path}: file has a header but no rows")
    return frame


def _require(frame: pd.DataFrame, path: Path, columns: dict[str, str]) -> None:
    missing = [f"{role} (column {col!r})" for role, col in columns.items() if col not in frame]
    if missing:
        raise DataError(
            f"{path}: missing {', '.join(missing)}; the file has columns {list(frame.columns)}"
        )


def _epoch_seconds(times: pd.Series) -> np.ndarray:
    # Independent of the datetime unit (pandas may store ns or us).
    return ((times - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def parse_timestamps(values: pd.Series, path: Path, column: str, frame: pd.DataFrame) -> np.ndarray:
    """Parse epoch seconds or ISO-8601 date-times into int64 epoch seconds.

    Raises
    ------
    DataError
        If any value is neither, naming the file, the column and the first bad row.
    """
    if pd.api.types.is_datetime64_any_dtype(values):  # Parquet timestamp columns
        return _epoch_seconds(pd.to_datetime(values, utc=True))
    text = values.astype(str).str.strip()
    seconds = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    needs_date = np.isnan(seconds)
    if needs_date.any():
        parsed = pd.to_datetime(text[needs_date], errors="coerce", utc=True, format="mixed")
        bad = np.zeros(len(text), dtype=bool)
        bad[needs_date] = parsed.isna().to_numpy()
        if bad.any():
            raise DataError(
                f"{path}: column {column!r} has values that are neither epoch seconds nor ISO "
                f"date-times{_example_row(frame, bad)}"
            )
        seconds[needs_date] = _epoch_seconds(parsed)
    return seconds.astype(np.int64)


def clean_interactions(frame: pd.DataFrame) -> pd.DataFrame:
    """Apply the duplicate policy, keeping file order.

    Parameters
    ----------
    frame : pandas.DataFrame
        Columns ``user_id``, ``item_id``, ``rating``, ``timestamp`` in file order.

    Returns
    -------
    pandas.DataFrame
        Without (user, item, timestamp) repeats (the last row kept), with a fresh index.
    """
    before = len(frame)
    frame = frame.drop_duplicates(["user_id", "item_id", "timestamp"], keep="last")
    dropped = before - len(frame)
    if dropped:
        log.warning(
            "dropped %d duplicate (user, item, timestamp) rows; kept the last of each", dropped
        )
    return frame.reset_index(drop=True)


def load_interactions(
    path: str | Path,
    *,
    user_col: str = "user",
    item_col: str = "item",
    rating_col: str | None = "rating",
    timestamp_col: str = "timestamp",
    items_path: str | Path | None = None,
    users_path: str | Path | None = None,
    name: str | None = None,
) -> Dataset:
    """Load a user's own interactions file (CSV or Parquet) with optional metadata files.

    Parameters
    ----------
    path : str or Path
        CSV or Parquet with one row per event.
    user_col, item_col, timestamp_col : str
        Column names of the user ID, item ID and timestamp (epoch seconds or ISO-8601).
    rating_col : str or None
        Column name of an optional numeric rating. If the column is absent the ratings are NaN.
    items_path : str or Path, optional
        Item metadata with ``item_id`` and any of ``title``, ``year``, ``genres``, ``tags``
        (genres and tags ``|``-separated).
    users_path : str or Path, optional
        User metadata with ``user_id`` and any of ``age``, ``gender``, ``occupation``,
        ``zip_prefix``.
    name : str, optional
        Dataset name; defaults to the file stem.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        For a missing or empty file, missing columns, non-numeric ratings or unparseable timestamps.
    """
    path = Path(path)
    frame = _read_table(path)
    _require(frame, path, {"user": user_col, "item": item_col, "timestamp": timestamp_col})
    out = pd.DataFrame(
        {
            "user_id": frame[user_col].astype(str).str.strip(),
            "item_id": frame[item_col].astype(str).str.strip(),
        }
    )
    for role, col in (("user", user_col), ("item", item_col)):
        empty = (out[f"{role}_id"] == "").to_numpy()
        if empty.any():
            raise DataError(
                f"{path}: column {col!r} has empty {role} IDs{_example_row(frame, empty)}"
            )
    if rating_col is not None and rating_col in frame:
        ratings = pd.to_numeric(frame[rating_col].astype(str).str.strip(), errors="coerce")
        bad = ratings.isna().to_numpy()
        if bad.any():
            raise DataError(
                f"{path}: column {rating_col!r} has non-numeric ratings{_example_row(frame, bad)}"
            )
        out["rating"] = ratings.astype(np.float64)
    else:
        out["rating"] = np.nan
    out["timestamp"] = parse_timestamps(frame[timestamp_col], path, timestamp_col, frame)
    items = _load_item_metadata(Path(items_path)) if items_path else None
    users = _load_user_metadata(Path(users_path)) if users_path else None
    sources = [p for p in (path, items_path, users_path) if p]
    interactions = clean_interactions(out)
    if items is None:
        items = empty_item_metadata(interactions["item_id"].unique())
    return Dataset(name or path.stem, interactions, items, users, file_checksum(sources))


def empty_item_metadata(item_ids: Sequence[str] | np.ndarray) -> pd.DataFrame:
    """Item metadata with only IDs (title = ID, no year, genres or tags)."""
    ids = sorted(map(str, item_ids))
    n = len(ids)
    return pd.DataFrame(
        {
            "item_id": ids,
            "title": ids,
            "year": np.full(n, np.nan),
            "genres": [[]] * n,
            "tags": [[]] * n,
        }
    )


def split_list(value: object) -> list[str]:
    """Split a ``|``-separated cell into a list of stripped, non-empty strings."""
    if isinstance(value, list | tuple | np.ndarray):
        return [str(v).strip() for v in value if str(v).strip()]
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [part.strip() for part in str(value).split("|") if part.strip()]


def year_from_title(title: str) -> float:
    """The trailing ``(YYYY)`` of a MovieLens title as a float, or NaN."""
    match = _YEAR.search(title)
    return float(match.group(1)) if match else float("nan")


def _load_item_metadata(path: Path) -> pd.DataFrame:
    frame = _read_table(path)
    _require(frame, path, {"item": "item_id"})
    out = pd.DataFrame({"item_id": frame["item_id"].astype(str).str.strip()})
    out["title"] = frame["title"].astype(str) if "title" in frame else out["item_id"]
    if "year" in frame:
        out["year"] = pd.to_numeric(frame["year"], errors="coerce").astype(np.float64)
    else:
        out["year"] = [year_from_title(t) for t in out["title"]]
    for col in ("genres", "tags"):
        out[col] = [split_list(v) for v in frame[col]] if col in frame else [[]] * len(out)
    return out.drop_duplicates("item_id", keep="last").reset_index(drop=True)


def _load_user_metadata(path: Path) -> pd.DataFrame:
    frame = _read_table(path)
    _require(frame, path, {"user": "user_id"})
    out = pd.DataFrame({"user_id": frame["user_id"].astype(str).str.strip()})
    out["age"] = pd.to_numeric(frame["age"], errors="coerce") if "age" in frame else np.nan
    for col in ("gender", "occupation", "zip_prefix"):
        out[col] = frame[col].astype(str).str.strip() if col in frame else ""
    return out.drop_duplicates("user_id", keep="last").reset_index(drop=True)
