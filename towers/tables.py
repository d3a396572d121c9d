"""Reading and validating event tables: what :mod:`towers.data` and :mod:`towers.movielens` share.

Every check raises :class:`DataError` naming the file, the column and the first bad row (its
position among the data rows). The duplicate policy is :func:`clean_interactions`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("towers.data")


MAX_ID_LENGTH = 128  # the longest user or item ID, in a file or a request
# The latest epoch second accepted (year 5138): a larger value is a unit error (milliseconds or
# microseconds since the epoch), which would put a file's events after every live one.
MAX_TIMESTAMP = 1e11


class DataError(ValueError):
    """A data file is missing, empty or malformed. The message names the file, column and a row."""


def example_row(frame: pd.DataFrame, mask: np.ndarray | pd.Series) -> str:
    """Describe the first row where ``mask`` is true by its position among the data rows.

    The number counts data rows from 1: the header and (in a CSV) blank lines are not counted, so
    it is not a line number.
    """
    positions = np.flatnonzero(np.asarray(mask, dtype=bool))
    if positions.size == 0:
        return ""
    first = int(positions[0])
    return (
        f"; first bad row: data row {first + 1} (counting from 1, header and blank lines not "
        f"counted): {frame.iloc[first].to_dict()}"
    )


def read_table(
    path: Path,
    sep: str | None = None,
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> pd.DataFrame:
    """Read a CSV (all cells as text) or Parquet file, with a fresh 0..n-1 index.

    Parameters
    ----------
    path : Path
        ``.parquet``/``.pq`` is read as Parquet, anything else as delimited text.
    sep : str, optional
        Field separator of a text file; defaults to ``","``.
    names : sequence of str, optional
        Column names of a text file without a header line. A row with fewer fields than the
        names gets empty cells (the caller's checks then name it); one with more is an error.
    encoding : str
        Text encoding of a text file (ml-100k's files are latin-1).

    Raises
    ------
    DataError
        If the file is missing, empty, has no rows or cannot be parsed (e.g. a row with more
        fields than the header).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            with warnings.catch_warnings():
                # A first row longer than the header would otherwise be truncated silently.
                warnings.simplefilter("error", pd.errors.ParserWarning)
                frame = pd.read_csv(
                    path,
                    sep=sep or ",",
                    dtype=str,
                    keep_default_na=False,
                    index_col=False,
                    on_bad_lines="error",
                    header=None if names is not None else "infer",
                    names=list(names) if names is not None else None,
                    encoding=encoding,
                )
    except pd.errors.ParserWarning as exc:
        raise DataError(
            f"{path}: cannot be read as a table: a row has more fields than the header ({exc})"
        ) from exc
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot be read as a table: {exc}") from exc
    if frame.empty:
        raise DataError(f"{path}: file has a header but no rows")
    return frame.reset_index(drop=True)


def id_text(values: pd.Series) -> pd.Series:
    """IDs as stripped text; integer-valued floats become integer text (``10.0`` -> ``"10"``).

    Missing values stay missing (so the caller can refuse them). Non-integer floats keep their
    ``str`` form.
    """
    missing = values.isna().to_numpy()
    if pd.api.types.is_float_dtype(values.dtype):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        whole = np.isfinite(numbers) & (numbers == np.floor(numbers))
        text = np.array([str(v) for v in values.to_numpy(dtype=object)], dtype=object)
        text[whole] = [str(int(v)) for v in numbers[whole]]
    else:
        text = values.astype(str).to_numpy(dtype=object)
    # Missing values are set after the text conversion: pandas 2's astype(str) would turn them
    # into the text "nan" (pandas 3 keeps them missing).
    out = pd.Series(text, index=values.index, dtype=object).astype(str).str.strip()
    out[missing] = np.nan
    return out


def check_ids(ids: pd.Series, path: Path, column: str, role: str, frame: pd.DataFrame) -> None:
    """Refuse missing (null/NaN) or blank IDs, and IDs that the live service could not take
    (over :data:`MAX_ID_LENGTH` characters, or not printable: control characters, a
    non-breaking space), naming the file, the column and the first bad row."""
    empty = (ids.isna() | (ids == "")).to_numpy(dtype=bool)
    if empty.any():
        raise DataError(
            f"{path}: column {column!r} has empty {role} IDs (blank or null)"
            f"{example_row(frame, empty)}"
        )
    text = ids.astype(str)
    unusable = ((text.str.len() > MAX_ID_LENGTH) | ~text.map(str.isprintable)).to_numpy(bool)
    if unusable.any():
        raise DataError(
            f"{path}: column {column!r} has {role} IDs that are not 1 to {MAX_ID_LENGTH} "
            "printable characters (no control characters or non-breaking spaces), which the "
            f"service could not take in a request{example_row(frame, unusable)}"
        )


def require_columns(frame: pd.DataFrame, path: Path, columns: dict[str, str]) -> None:
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
        times = pd.to_datetime(values, utc=True)
        missing = times.isna().to_numpy()
        if missing.any():
            raise DataError(
                f"{path}: column {column!r} has missing timestamps{example_row(frame, missing)}"
            )
        return _epoch_seconds(times)
    text = values.astype(str).str.strip()
    missing = (values.isna() | (text == "")).to_numpy(dtype=bool)
    if missing.any():
        raise DataError(
            f"{path}: column {column!r} has missing timestamps{example_row(frame, missing)}"
        )
    seconds = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    out_of_range = np.isinf(seconds) | (np.abs(np.nan_to_num(seconds)) >= 2.0**63)
    if out_of_range.any():
        raise DataError(
            f"{path}: column {column!r} has infinite or out-of-range timestamps"
            f"{example_row(frame, out_of_range)}"
        )
    needs_date = np.isnan(seconds)
    if needs_date.any():
        # ISO-8601 only: "mixed" would also take "now", "today" (a different time on every
        # read of the same file) and locale-dependent forms such as "01/02/2020".
        # (pandas still reads "now" and "today" in that format, hence the date check first.)
        dates = text[needs_date]
        parsed = pd.to_datetime(
            dates.where(dates.str.match(r"\d{4}-\d{2}-\d{2}(?:$|[T ])")),
            errors="coerce", utc=True, format="ISO8601",
        )  # fmt: skip
        bad = np.zeros(len(text), dtype=bool)
        bad[needs_date] = parsed.isna().to_numpy()
        if bad.any():
            raise DataError(
                f"{path}: column {column!r} has values that are neither epoch seconds nor ISO "
                f"date-times{example_row(frame, bad)}"
            )
        seconds[needs_date] = _epoch_seconds(parsed)
    too_late = seconds > MAX_TIMESTAMP
    if too_late.any():
        raise DataError(
            f"{path}: column {column!r} has timestamps after the year 5138 (over {MAX_TIMESTAMP:g}"
            f" s): give epoch seconds, not milliseconds{example_row(frame, too_late)}"
        )
    return seconds.astype(np.int64)


def parse_ratings(values: pd.Series, path: Path, column: str, frame: pd.DataFrame) -> np.ndarray:
    """Parse a rating column into float64.

    Raises
    ------
    DataError
        If any value is missing, non-numeric or not finite (``inf``), naming the file, the column
        and the first bad row.
    """
    ratings = pd.to_numeric(values.astype(str).str.strip(), errors="coerce")
    ratings = ratings.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(ratings)
    if bad.any():
        raise DataError(
            f"{path}: column {column!r} has non-numeric or non-finite ratings"
            f"{example_row(frame, bad)}"
        )
    return ratings


def parse_numbers(
    values: pd.Series,
    path: Path,
    column: str,
    frame: pd.DataFrame,
    bounds: tuple[float, float] = (-np.inf, np.inf),
) -> np.ndarray:
    """Parse an optional numeric metadata column (a year, an age) into float64; a blank or null
    cell is NaN (unknown).

    Raises
    ------
    DataError
        If a value is non-numeric, not finite or outside ``bounds`` (inclusive), naming the file,
        the column and the first bad row.
    """
    text = values.astype(str).str.strip()
    blank = (values.isna() | (text == "")).to_numpy(dtype=bool)
    numbers = pd.to_numeric(text.where(~blank, "nan"), errors="coerce")
    numbers = numbers.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    low, high = bounds
    with np.errstate(invalid="ignore"):
        bad = ~blank & ~(np.isfinite(numbers) & (numbers >= low) & (numbers <= high))
    if bad.any():
        limits = "" if np.isinf(low) and np.isinf(high) else f" in [{low:g}, {high:g}]"
        raise DataError(
            f"{path}: column {column!r} has values that are not numbers{limits}"
            f"{example_row(frame, bad)}"
        )
    numbers[blank] = np.nan
    return numbers


def validate_interactions(
    frame: pd.DataFrame,
    path: Path,
    *,
    user_col: str,
    item_col: str,
    rating_col: str | None,
    timestamp_col: str,
) -> pd.DataFrame:
    """Check and convert a raw event table into the interaction columns of a :class:`Dataset`.

    Parameters
    ----------
    frame : pandas.DataFrame
        The table as read (e.g. by ``read_table``), with a 0..n-1 index.
    path : Path
        The file it came from, named in errors.
    user_col, item_col, timestamp_col : str
        Column names of the user ID, item ID and timestamp (epoch seconds or ISO-8601).
    rating_col : str or None
        Column name of the rating; when None or absent the ratings are NaN.

    Returns
    -------
    pandas.DataFrame
        ``user_id``, ``item_id`` (str), ``rating`` (float64), ``timestamp`` (int64), after the
        duplicate policy (:func:`clean_interactions`).

    Raises
    ------
    DataError
        For missing columns, empty or missing IDs, non-numeric or non-finite ratings and missing,
        infinite or unparseable timestamps, naming the file, the column and the first bad row.
    """
    require_columns(frame, path, {"user": user_col, "item": item_col, "timestamp": timestamp_col})
    out = pd.DataFrame({"user_id": id_text(frame[user_col]), "item_id": id_text(frame[item_col])})
    for role, col in (("user", user_col), ("item", item_col)):
        check_ids(out[f"{role}_id"], path, col, role, frame)
    if rating_col is not None and rating_col in frame:
        out["rating"] = parse_ratings(frame[rating_col], path, rating_col, frame)
    else:
        out["rating"] = np.nan
    out["timestamp"] = parse_timestamps(frame[timestamp_col], path, timestamp_col, frame)
    return clean_interactions(out)


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


__all__ = [
    "DataError",
    "check_ids",
    "clean_interactions",
    "example_row",
    "id_text",
    "parse_ratings",
    "parse_timestamps",
    "read_table",
    "require_columns",
    "validate_interactions",
]
