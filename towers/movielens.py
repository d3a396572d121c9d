"""MovieLens loaders (ml-latest-small, ml-100k) and a checksum-verified GroupLens download.

The MovieLens licence forbids redistribution, so nextwatch never ships these files. It reads them
from a directory given by a flag or the ``NEXTWATCH_DATA`` environment variable, and downloads the
official archive only when the dataset is absent there.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import logging
import os
import shutil
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from towers.data import (
    AGE_BOUNDS,
    USER_COLUMNS,
    Dataset,
    file_checksum,
    split_list,
    year_from_title,
)
from towers.leftovers import remove_dead, work_dir
from towers.tables import (
    DataError,
    check_ids,
    example_row,
    id_text,
    parse_numbers,
    read_table,
    require_columns,
    validate_interactions,
)

log = logging.getLogger(__name__)

DATA_ENV = "NEXTWATCH_DATA"
GROUPLENS = "https://files.grouplens.org/datasets/movielens"
# SHA-256 of the official archives; a download that does not match is refused.
ARCHIVES = {
    "ml-latest-small": "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
    "ml-100k": "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
}
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip


def default_data_dir() -> Path:
    """``$NEXTWATCH_DATA`` if set, else ``~/.cache/nextwatch/data``."""
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else Path.home() / ".cache" / "nextwatch" / "data"


def download(name: str, data_dir: Path, url: str | None = None) -> Path:
    """Download and unpack the GroupLens archive ``name`` into ``data_dir``, checking its SHA-256.

    The archive is unpacked into a temporary folder inside ``data_dir`` and renamed to
    ``data_dir/name`` only once complete, so an interrupted run never leaves a partial dataset
    folder that a later run would trust.

    Raises
    ------
    ValueError
        If ``name`` is not a known MovieLens dataset.
    DataError
        If the download fails (network error, connection dropped mid-transfer), the archive's
        checksum differs from the official one (nothing is unpacked then) or it lacks the
        ``name`` folder.
    """
    if name not in ARCHIVES:
        raise ValueError(f"name must be one of {sorted(ARCHIVES)}, got {name!r}")
    url = url or f"{GROUPLENS}/{name}.zip"
    log.info("downloading %s from %s", name, url)
    try:
        with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 (fixed https URL)
            payload = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise DataError(f"{url}: download failed ({type(exc).__name__}: {exc})") from exc
    digest = hashlib.sha256(payload).hexdigest()
    if digest != ARCHIVES[name]:
        raise DataError(f"{url}: SHA-256 {digest} differs from the official {ARCHIVES[name]}")
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / name
    remove_dead(data_dir, f".{name}.partial-")  # left by an unpack that was killed
    staging = work_dir(data_dir, f".{name}.partial-")
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            archive.extractall(staging)
        unpacked = staging / name
        if not unpacked.is_dir():
            raise DataError(f"{url}: the archive has no {name}/ folder")
        try:
            os.replace(unpacked, target)
        except OSError:
            if not target.is_dir():
                raise
            # Another run finished first; its complete folder is as good as ours.
            log.info("%s appeared while unpacking; keeping it", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_movielens(
    name: str, data_dir: str | Path | None = None, *, allow_download: bool = True
) -> Dataset:
    """Load ``ml-latest-small`` or ``ml-100k`` from ``data_dir/name``.

    Parameters
    ----------
    name : {"ml-latest-small", "ml-100k"}
    data_dir : str or Path, optional
        Folder that holds the unpacked dataset folder; defaults to :func:`default_data_dir`.
    allow_download : bool
        Download the official archive when the folder is missing.

    Returns
    -------
    Dataset
        ml-latest-small has titles, years, genres and tags; ml-100k has titles, years, genres and
        user demographics (age, gender, occupation, zip prefix).
    """
    if name not in ARCHIVES:
        raise ValueError(f"name must be one of {sorted(ARCHIVES)}, got {name!r}")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    folder = root / name
    if not folder.is_dir():
        if not allow_download:
            raise DataError(f"{folder}: dataset folder not found and downloads are disabled")
        download(name, root)
    return _load_small(folder) if name == "ml-latest-small" else _load_100k(folder)


def _load_small(folder: Path) -> Dataset:
    ratings_path, movies_path, tags_path = (
        folder / f for f in ("ratings.csv", "movies.csv", "tags.csv")
    )
    for path in (ratings_path, movies_path):
        if not path.exists():
            raise DataError(f"{path}: file not found")
    interactions = validate_interactions(
        read_table(ratings_path),
        ratings_path,
        user_col="userId",
        item_col="movieId",
        rating_col="rating",
        timestamp_col="timestamp",
    )
    movies = read_table(movies_path)
    require_columns(movies, movies_path, {"item": "movieId", "title": "title", "genres": "genres"})
    movie_ids = id_text(movies["movieId"])
    check_ids(movie_ids, movies_path, "movieId", "item", movies)
    titles = movies["title"].astype(str)
    titles = titles.where(titles.str.strip() != "", movie_ids)  # a blank title: the ID
    tags_by_item: dict[str, list[str]] = {}
    sources = [ratings_path, movies_path]
    if tags_path.exists():
        sources.append(tags_path)
        tags = read_table(tags_path)
        require_columns(tags, tags_path, {"item": "movieId", "tag": "tag"})
        tag_items = id_text(tags["movieId"])
        check_ids(tag_items, tags_path, "movieId", "item", tags)
        for item, group in tags["tag"].astype(str).groupby(tag_items.to_numpy()):
            tags_by_item[str(item)] = sorted({t.strip().lower() for t in group if t.strip()})
    genres = [[g for g in split_list(v) if g != "(no genres listed)"] for v in movies["genres"]]
    items = pd.DataFrame(
        {
            "item_id": movie_ids,
            "title": titles,
            "year": [year_from_title(t) for t in titles],
            "genres": genres,
            "tags": [tags_by_item.get(i, []) for i in movie_ids],
        }
    )
    return Dataset("ml-latest-small", interactions, items, None, file_checksum(sources))


def _load_100k(folder: Path) -> Dataset:
    data_path, item_path, user_path = (folder / f for f in ("u.data", "u.item", "u.user"))
    for path in (data_path, item_path, user_path):
        if not path.exists():
            raise DataError(f"{path}: file not found")
    interactions = read_100k_ratings(data_path)
    item_columns = ["item_id", "title", "released", "video_released", "url", *ML100K_GENRES]
    raw = read_table(item_path, sep="|", names=item_columns, encoding="latin-1")
    item_ids = id_text(raw["item_id"])
    check_ids(item_ids, item_path, "item_id (field 1)", "item", raw)
    flags = raw[list(ML100K_GENRES)].astype(str).apply(lambda c: c.str.strip())
    bad = ~flags.isin(["0", "1"]).all(axis=1).to_numpy()
    if bad.any():
        raise DataError(
            f"{item_path}: the {len(ML100K_GENRES)} genre fields (6 to {5 + len(ML100K_GENRES)}) "
            f"must each be 0 or 1 (a row may be short){example_row(raw, bad)}"
        )
    flags = (flags == "1").to_numpy()
    titles = raw["title"].astype(str)
    titles = titles.where(titles.str.strip() != "", item_ids)
    dates = pd.to_datetime(raw["released"], format="%d-%b-%Y", errors="coerce")
    title_years = np.array([year_from_title(t) for t in titles], dtype=np.float64)
    items = pd.DataFrame(
        {
            "item_id": item_ids,
            "title": titles,
            "year": np.where(
                np.isnan(title_years), dates.dt.year.to_numpy(np.float64), title_years
            ),
            "genres": [
                [g for g, on in zip(ML100K_GENRES, row, strict=True) if on] for row in flags
            ],
            "tags": [[] for _ in range(len(raw))],
        }
    )
    user_raw = read_table(user_path, sep="|", names=list(USER_COLUMNS))
    user_ids = id_text(user_raw["user_id"])
    check_ids(user_ids, user_path, "user_id (field 1)", "user", user_raw)
    users = pd.DataFrame(
        {
            "user_id": user_ids,
            "age": parse_numbers(user_raw["age"], user_path, "age (field 2)", user_raw, AGE_BOUNDS),
            "gender": user_raw["gender"].astype(str).str.strip(),
            "occupation": user_raw["occupation"].astype(str).str.strip(),
            # first digit: a coarse US region
            "zip_prefix": user_raw["zip_prefix"].astype(str).str.strip().str[:1],
        }
    )
    return Dataset(
        "ml-100k", interactions, items, users, file_checksum([data_path, item_path, user_path])
    )


def read_100k_ratings(path: Path) -> pd.DataFrame:
    """Read a tab-separated ml-100k ratings file (``u.data``, ``u1.base``, ...)."""
    columns = ["user_id", "item_id", "rating", "timestamp"]
    return validate_interactions(
        read_table(path, sep="\t", names=columns),
        path,
        user_col="user_id",
        item_col="item_id",
        rating_col="rating",
        timestamp_col="timestamp",
    )
