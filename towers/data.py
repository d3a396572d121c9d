"""Interaction logs, item and user metadata: containers and the generic file loader.

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

from towers.tables import (
    DataError,  # noqa: F401  (re-exported: towers.data.DataError is public API)
    check_ids,
    id_text,
    parse_numbers,
    read_table,
    require_columns,
    validate_interactions,
)

log = logging.getLogger(__name__)

INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
ITEM_COLUMNS = ("item_id", "title", "year", "genres", "tags")
USER_COLUMNS = ("user_id", "age", "gender", "occupation", "zip_prefix")
_YEAR = re.compile(r"\((\d{4})\)\s*$")
AGE_BOUNDS = (0.0, 130.0)  # as the service accepts (serving.schemas)
YEAR_BOUNDS = (0.0, 9999.0)


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


def file_checksum(paths: Sequence[Path], salt: str = "") -> str:
    """SHA-256 over the bytes of ``paths`` in the given order (after ``salt``, if any: how the
    files were read, such as a column mapping)."""
    digest = hashlib.sha256(salt.encode())
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_interactions(
    path: str | Path,
    *,
    user_col: str = "user",
    item_col: str = "item",
    rating_col: str | None = None,
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
        Column name of a numeric rating, which must exist if named. None reads a ``rating``
        column if the file has one; without it the ratings are NaN.
    items_path : str or Path, optional
        Item metadata with ``item_id`` and any of ``title``, ``year``, ``genres``, ``tags``
        (genres and tags ``|``-separated). An interacted item the file does not list gets its
        ID as title and no other metadata.
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
        For a missing, empty or unparseable file, missing columns, empty or missing IDs,
        non-numeric or non-finite ratings, or missing, infinite or unparseable timestamps.
    """
    path = Path(path)
    frame = read_table(path)
    if rating_col is not None:  # named, so it must be there (a typo must not drop the ratings)
        require_columns(frame, path, {"rating": rating_col})
    rating_col = rating_col or "rating"
    interactions = validate_interactions(
        frame,
        path,
        user_col=user_col,
        item_col=item_col,
        rating_col=rating_col,
        timestamp_col=timestamp_col,
    )
    watched = interactions["item_id"].unique()
    if items_path:
        items = _load_item_metadata(Path(items_path))
        # Every watched item is in the catalogue, so that it can be shown, looked up and rated.
        unlisted = np.setdiff1d(watched.astype(str), items["item_id"].to_numpy(dtype=str))
        if len(unlisted):
            log.warning(
                "%s lists no metadata for %d watched item(s), e.g. %r: titled by their IDs",
                items_path, len(unlisted), unlisted[0],
            )  # fmt: skip
            items = pd.concat([items, empty_item_metadata(unlisted)], ignore_index=True)
    else:
        items = empty_item_metadata(watched)
    users = _load_user_metadata(Path(users_path)) if users_path else None
    sources = [p for p in (path, items_path, users_path) if p]
    # The same file read with other columns is other data (evaluate's leak guard compares it).
    # The default mapping adds nothing, so checksums recorded before this rule still match.
    columns = (user_col, item_col, rating_col, timestamp_col)
    salt = "" if columns == ("user", "item", "rating", "timestamp") else f"columns: {columns}\n"
    return Dataset(name or path.stem, interactions, items, users, file_checksum(sources, salt))


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


def year_from_title(title: object) -> float:
    """The trailing ``(YYYY)`` of a MovieLens title as a float, or NaN (also for a non-string)."""
    if not isinstance(title, str):
        return float("nan")
    match = _YEAR.search(title)
    return float(match.group(1)) if match else float("nan")


def _load_item_metadata(path: Path) -> pd.DataFrame:
    frame = read_table(path)
    require_columns(frame, path, {"item": "item_id"})
    out = pd.DataFrame({"item_id": id_text(frame["item_id"])})
    check_ids(out["item_id"], path, "item_id", "item", frame)
    if "title" in frame:
        # A missing or blank title falls back to the item ID, as when the file has no title.
        titles = frame["title"].astype(str).str.strip()
        out["title"] = titles.where(frame["title"].notna() & (titles != ""), out["item_id"])
    else:
        out["title"] = out["item_id"]
    if "year" in frame:
        out["year"] = parse_numbers(frame["year"], path, "year", frame, YEAR_BOUNDS)
    else:
        out["year"] = [year_from_title(t) for t in out["title"]]
    for col in ("genres", "tags"):
        out[col] = [split_list(v) for v in frame[col]] if col in frame else [[]] * len(out)
    return out.drop_duplicates("item_id", keep="last").reset_index(drop=True)


def _load_user_metadata(path: Path) -> pd.DataFrame:
    frame = read_table(path)
    require_columns(frame, path, {"user": "user_id"})
    out = pd.DataFrame({"user_id": id_text(frame["user_id"])})
    check_ids(out["user_id"], path, "user_id", "user", frame)
    if "age" in frame:
        out["age"] = parse_numbers(frame["age"], path, "age", frame, AGE_BOUNDS)
    else:
        out["age"] = np.nan
    for col in ("gender", "occupation", "zip_prefix"):
        # As IDs: a Parquet float column's 1.0 is "1", and a missing value is "" (unknown).
        out[col] = id_text(frame[col]).fillna("") if col in frame else ""
    return out.drop_duplicates("user_id", keep="last").reset_index(drop=True)
