"""The ranker's artefact directory: writing it atomically, reading it back for training,
export and serving.

``config.json``   ranker config, training options, the tower artefact's version, normalisers
``vocab/``        items.txt, item_genres.npy, item_years.npy, genres.txt, demographics.json
``weights/``      the TensorFlow checkpoint
``serving.npz``   the arrays :class:`ranking.scorer.RankScorer` serves from, without Keras
``metrics.json``  loss curve, example counts, timings
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from ranking.ensemble import RankerEnsemble
from ranking.impressions import NUMERIC
from ranking.model import Ranker, RankerConfig
from ranking.normalize import QuantileNormalizer
from ranking.scorer import RankScorer
from ranking.train import FORMAT_VERSION, IMPRESSION_DEFAULTS, RankerOptions
from towers.artefact import SERVING_FILE, load_arrays, replace_directory, save_arrays
from towers.leftovers import remove_dead, work_dir

log = logging.getLogger(__name__)


def save_ranker(
    ranker: Ranker | RankerEnsemble,
    directory: str | Path,
    metrics: dict,
    tower_version: str,
    options: RankerOptions,
    impressions: dict | None = None,
) -> Path:
    """Write the ranker artefact directory (see the module docstring); ``impressions`` are the
    settings of the simulated impressions it learned from (``num_candidates``,
    ``events_per_user``), which a retrain reuses.

    The directory is written beside its place and renamed into it when complete (replacing a
    previous ranker whole), so a failed write leaves the previous ranker as it was."""
    final = Path(directory)
    check_ranker_output(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_dead(final.parent, f".{final.name}.partial-")
    staging = work_dir(final.parent, f".{final.name}.partial-")
    try:
        staging.chmod(0o755)
        _write_ranker(ranker, staging, metrics, tower_version, options, impressions)
        replace_directory(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def check_ranker_output(path: Path) -> None:
    """Refuse a ranker output that exists and is neither empty nor a ranker (it would be
    replaced).

    Raises
    ------
    FileExistsError
        Naming ``path``.
    """
    if path.exists() and not _replaceable_ranker(path):
        raise FileExistsError(
            f"ranker output {path} exists and is not a ranker: writing there would replace it"
        )


def _replaceable_ranker(path: Path) -> bool:
    """An empty directory, or a ranker artefact."""
    if not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    try:
        return json.loads((path / "config.json").read_text()).get("kind") == "ranker"
    except (OSError, ValueError, AttributeError):
        return False


def _write_ranker(
    ranker: Ranker | RankerEnsemble,
    directory: Path,
    metrics: dict,
    tower_version: str,
    options: RankerOptions,
    impressions: dict | None,
) -> None:
    vocab = directory / "vocab"
    vocab.mkdir(parents=True, exist_ok=True)
    (vocab / "items.txt").write_text("\n".join(ranker.item_ids) + "\n", encoding="utf-8")
    (vocab / "genres.txt").write_text("\n".join(ranker.genre_names) + "\n", encoding="utf-8")
    np.save(vocab / "item_genres.npy", ranker.item_genre_array)
    np.save(vocab / "item_years.npy", ranker.item_year_array)
    (vocab / "demographics.json").write_text(
        json.dumps({k: list(v) for k, v in ranker.demographic_vocabularies.items()})
    )
    ranker.save_weights(str(directory / "weights" / "ranker"))
    save_arrays(directory / SERVING_FILE, RankScorer.from_model(ranker).arrays)
    config = {
        "format_version": FORMAT_VERSION,
        "kind": "ranker",
        "tower_version": tower_version,
        "ranker": ranker.config.to_dict(),
        "options": asdict(options),
        "impressions": dict(impressions or {}),
        "normalizers": {k: v.to_dict() for k, v in ranker.normalizers.items()},
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2))


def _ranker_meta(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a ranker artefact (no config.json)")
    meta = json.loads(path.read_text())
    if meta.get("kind") != "ranker" or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory} is not a ranker artefact of format {FORMAT_VERSION}")
    # Rankers saved before ``user_genres`` existed were trained without it, whatever its default.
    cfg = {"user_genres": False, **meta["ranker"]}
    meta["ranker"] = RankerConfig(
        **{**cfg, "hidden_units": tuple(cfg["hidden_units"]),
           "rating_units": tuple(cfg["rating_units"])}
    )  # fmt: skip
    return meta


def ranker_settings(directory: str | Path) -> tuple[RankerConfig, RankerOptions]:
    """The configuration and training options a saved ranker was trained with, so that a
    retrain keeps them (options an older artefact lacks take their defaults).

    Raises
    ------
    FileNotFoundError
        If ``directory`` is not a ranker artefact.
    """
    meta = _ranker_meta(Path(directory))
    known = {f.name for f in fields(RankerOptions)}
    saved = {k: v for k, v in meta.get("options", {}).items() if k in known}
    return meta["ranker"], RankerOptions(**saved)


def ranker_impressions(directory: str | Path) -> dict:
    """``num_candidates`` and ``events_per_user`` of the impressions a saved ranker learned from
    (the defaults for an artefact that predates them), for a retrain to reuse."""
    saved = _ranker_meta(Path(directory)).get("impressions", {})
    return {**IMPRESSION_DEFAULTS, **{k: v for k, v in saved.items() if k in IMPRESSION_DEFAULTS}}


def load_ranker(directory: str | Path) -> Ranker | RankerEnsemble:
    """Rebuild a ranker saved by :func:`save_ranker`.

    Raises
    ------
    FileNotFoundError
        If ``directory`` is not a ranker artefact.
    """
    directory = Path(directory)
    meta = _ranker_meta(directory)
    vocab = directory / "vocab"
    items = (vocab / "items.txt").read_text(encoding="utf-8").splitlines()
    genres, years = np.load(vocab / "item_genres.npy"), np.load(vocab / "item_years.npy")
    normalizers = {k: QuantileNormalizer.from_dict(v) for k, v in meta["normalizers"].items()}
    demographics = json.loads((vocab / "demographics.json").read_text()) or None
    genres_named = genre_names(vocab)
    members = []
    for _ in range(meta["ranker"].members):
        members.append(Ranker(meta["ranker"], items, genres, years, normalizers, demographics))
        members[-1].genre_names = genres_named
    ranker = members[0] if len(members) == 1 else RankerEnsemble(members)
    ranker.tower_version = meta["tower_version"]
    dummy = {
        "item_id": np.array([""]), "history": np.array([[""]]),
        **{name: np.zeros(1, np.float32) for name in NUMERIC},
        **{col: np.array([""]) for col in ranker.demographic_vocabularies},
    }  # fmt: skip
    ranker(dummy)
    ranker.load_weights(str(directory / "weights" / "ranker")).expect_partial()
    return ranker


def genre_names(vocab: Path) -> list[str] | None:
    """The ranker's genre columns' names, from ``vocab/genres.txt`` (one per line; None
    without the file)."""
    path = vocab / "genres.txt"
    if not path.exists():
        return None
    return [g for g in path.read_text(encoding="utf-8").splitlines() if g]


def load_rank_scorer(directory: str | Path) -> tuple[RankScorer, str]:
    """The ranker for serving, read from its plain arrays (``serving.npz``) without building a
    Keras model (rankers saved before that file existed are rebuilt through Keras), and the
    version of the tower it was trained for.

    Raises
    ------
    FileNotFoundError
        If ``directory`` is not a ranker artefact.
    ValueError
        If its format is unknown or its arrays do not fit its vocabularies.
    """
    directory = Path(directory)
    meta = _ranker_meta(directory)
    if not (directory / SERVING_FILE).exists():
        log.warning("%s has no %s: building the ranker with Keras", directory, SERVING_FILE)
        return RankScorer.from_model(load_ranker(directory)), meta["tower_version"]
    vocab = directory / "vocab"
    try:
        scorer = RankScorer(
            meta["ranker"],
            (vocab / "items.txt").read_text(encoding="utf-8").splitlines(),
            load_arrays(directory / SERVING_FILE),
            {k: QuantileNormalizer.from_dict(v) for k, v in meta["normalizers"].items()},
            json.loads((vocab / "demographics.json").read_text()),
            genre_names(vocab),
        )
    except ValueError as exc:
        raise ValueError(f"{directory / SERVING_FILE}: {exc}") from exc
    return scorer, meta["tower_version"]


def write_serving_arrays(directory: str | Path) -> Path:
    """Add ``serving.npz`` to a ranker saved before it existed (through Keras, once)."""
    directory = Path(directory)
    path = directory / SERVING_FILE
    save_arrays(path, RankScorer.from_model(load_ranker(directory)).arrays)
    return path
