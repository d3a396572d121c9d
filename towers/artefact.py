"""The candidate tower's self-describing artefact directory: writing, reading, versions.

An artefact directory holds everything needed to rebuild the model without the training data:

``config.json``      tower config, training options, dataset name and data checksum, version
``vocab/``           items.txt, tokens.txt, item_tokens.npy, item_counts.npy, demographics.json
``weights/``         the TensorFlow checkpoint
``item_vectors.npy`` softmax rows with the bias as a last column, shape (num_items, d + 1)
``index/``           the ScaNN index over those rows (see :mod:`towers.index`)
``serving.npz``      the query tower's arrays for serving in numpy
                     (:class:`towers.query.QueryEncoder`): a server loads them without Keras
``items.parquet``    item metadata; ``users.parquet`` the training users' histories
                     (see :mod:`towers.catalogue`; written when the training data is given)
``metrics.json``     training curve, speed, peak memory and any evaluation numbers
``optimizer.npz``    Adam's moments and step count, which a warm start continues (optional:
                     older artefacts and those saved without it start a fresh optimizer)

The version (``config.json``'s ``version``) is the creation time plus a hash of the item vectors,
e.g. ``20261128T073500Z-1a2b3c4d``; exported SavedModels and candidate files carry it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from towers.catalogue import save_catalogue
from towers.content import ContentProjection, NoMetadataError, frame_tokens
from towers.data import Dataset
from towers.features import query_inputs
from towers.files import load_arrays, read_json, save_arrays
from towers.index import IndexParams, ItemIndex
from towers.leftovers import remove_dead, work_dir
from towers.model import CandidateTower, TowerConfig
from towers.optim import training_state
from towers.query import QueryEncoder

if TYPE_CHECKING:
    from towers.train import TrainResult

log = logging.getLogger(__name__)
FORMAT_VERSION = 2  # 2: index/, version, catalogue files
SERVING_FILE = "serving.npz"  # the query encoder's arrays (optional: older artefacts lack it)
OPTIMIZER_FILE = "optimizer.npz"  # the training optimizer's state (optional)
NEW_USER_DIR = "new_user"  # an optional second tower for users with few ratings (same layout)


def save_artefact(
    result: TrainResult,
    directory: str | Path,
    extra_metrics: dict | None = None,
    data: Dataset | None = None,
    index_params: IndexParams | None = None,
    lineage: dict | None = None,
    extra: Callable[[Path], None] | None = None,
    keep_optimizer: bool = True,
) -> Path:
    """Write ``result`` as a self-describing artefact directory (see the module docstring).

    Parameters
    ----------
    result : TrainResult
    directory : str or Path
    extra_metrics : dict, optional
        Merged into ``metrics.json``.
    data : Dataset, optional
        The training data, whose item metadata and user histories serving needs.
    index_params : IndexParams, optional
        Retrieval index settings; derived from the catalogue size when omitted.
    lineage : dict, optional
        Where a warm-started model came from (parent version, data range, new items), recorded
        in ``config.json``.
    extra : callable, optional
        Called with the directory being written, after everything else and before it is renamed
        into place: more files that belong to the artefact (a failure there leaves the previous
        artefact as it was).
    keep_optimizer : bool
        Also save the optimizer's state (``optimizer.npz``, two more copies of every trained
        table), which a warm start continues; the model must still hold its optimizer.

    The artefact is written into a temporary sibling directory and renamed to ``directory`` when
    complete (replacing what was there), so a crash never leaves a mix of two models.
    """
    final = Path(directory)
    check_output(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Left by a run killed mid-write (its own cleanup below never ran).
    remove_dead(final.parent, f".{final.name}.partial-")
    remove_dead(final.parent, f".{final.name}.old-")
    directory = work_dir(final.parent, f".{final.name}.partial-")
    try:
        directory.chmod(0o755)
        _write_artefact(result, directory, extra_metrics, data, index_params, lineage)
        state = training_state(result.model) if keep_optimizer else None
        if state is not None:
            save_arrays(directory / OPTIMIZER_FILE, state)
        if extra is not None:
            extra(directory)
        replace_directory(directory, final, keep=("logs",))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return final


def check_output(path: str | Path) -> None:
    """Refuse an artefact output path that holds something other than an artefact.

    An existing artefact is replaced (atomically, by :func:`save_artefact`); so is an empty
    directory, or one that holds only a training run's ``logs/``. Anything else would be lost.

    Raises
    ------
    FileExistsError
        If ``path`` is a file, or a directory with other content, naming it.
    """
    path = Path(path)
    if not path.exists():
        return
    if path.is_dir():
        entries = {p.name for p in path.iterdir()}
        if entries <= {"logs"} or _is_artefact(path):
            return
        what = f"a directory that is not a nextwatch artefact (it holds {sorted(entries)[:5]})"
    else:
        what = "a file"
    raise FileExistsError(
        f"output {path} is {what}: writing the artefact there would replace it; choose a new "
        "directory, or an existing artefact to replace"
    )


def check_outside_registry(path: str | Path) -> None:
    """Refuse a path in a model registry (:mod:`serving.registry`) as a command's output: a
    published version, or anything inside one, is never modified (its checksums would no longer
    match), and only ``nextwatch retrain --home`` adds versions.

    Raises
    ------
    FileExistsError
        Naming the path and the registry.
    """
    path = Path(path).resolve()
    for directory in (path, *path.parents):
        # serving.registry's files: a published version's checksums, a registry root's pointers
        if (directory / "CHECKSUMS.json").is_file():
            raise FileExistsError(
                f"output {path} is in {directory}, a published version of a model registry, "
                "which is never modified: choose another directory"
            )
        if directory != path and any((directory / m).is_file() for m in ("CURRENT", "HISTORY")):
            raise FileExistsError(
                f"output {path} is inside the model registry {directory}, whose versions only "
                "`nextwatch retrain --home` publishes: choose a directory outside it"
            )


def _is_artefact(path: Path) -> bool:
    try:
        meta = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("kind") == "candidate-tower"


def replace_directory(source: Path, target: Path, keep: tuple[str, ...] = ()) -> None:
    """Rename ``source`` to ``target``; an existing ``target`` is moved aside first, then
    removed, so that ``target`` is always either the old directory or the new one. Entries named
    in ``keep`` (e.g. the TensorBoard logs a training run wrote there) move into ``source``."""
    if target.exists():
        for name in keep:
            if (target / name).exists() and not (source / name).exists():
                (target / name).rename(source / name)
        old = work_dir(target.parent, f".{target.name}.old-")
        old.rmdir()  # a free name next to target
        target.rename(old)
        source.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        source.rename(target)


def _write_artefact(
    result: TrainResult,
    directory: Path,
    extra_metrics: dict | None,
    data: Dataset | None,
    index_params: IndexParams | None,
    lineage: dict | None,
) -> None:
    vocab = directory / "vocab"
    vocab.mkdir(parents=True, exist_ok=True)
    model = result.model
    (vocab / "items.txt").write_text("\n".join(model.item_ids) + "\n", encoding="utf-8")
    (vocab / "tokens.txt").write_text("\n".join(model.token_vocabulary) + "\n", encoding="utf-8")
    np.save(vocab / "item_tokens.npy", model.item_token_array)
    np.save(vocab / "item_counts.npy", model.item_counts)
    (vocab / "demographics.json").write_text(
        json.dumps({k: list(v) for k, v in model.demographic_vocabularies.items()})
    )
    variables_only(model).save_weights(str(directory / "weights" / "tower"))
    save_arrays(directory / SERVING_FILE, QueryEncoder.from_model(model).arrays)
    matrix = model.item_matrix()
    np.save(directory / "item_vectors.npy", matrix)
    ItemIndex.build(model.item_ids, matrix, index_params).save(directory / "index")
    if data is not None:
        save_catalogue(directory, data)
        try:
            fit_content_projection(directory, data.items)
        except NoMetadataError as exc:
            log.warning("no content projection (new items cannot be added from metadata): %s", exc)
    now = datetime.now(UTC)
    config = {
        "format_version": FORMAT_VERSION,
        "kind": "candidate-tower",
        "version": f"{now:%Y%m%dT%H%M%SZ}-{hashlib.sha256(matrix.tobytes()).hexdigest()[:8]}",
        "created_at": now.isoformat(timespec="seconds"),
        "dataset": result.dataset_name,
        "time_window": list(model.time_window),
        "data_checksum": result.data_checksum,
        "tower": result.config.to_dict(),
        "train_options": asdict(result.options),
        "lineage": lineage,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    metrics = {**result.metrics, **(extra_metrics or {})}
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2))


def variables_only(model: CandidateTower) -> CandidateTower:
    """An uncompiled copy of ``model`` holding its weights: saving it writes the model's
    variables without the optimizer's moments (two more copies of every table), which serving
    and warm starts never read."""
    twin = CandidateTower(
        model.config, model.item_ids, model.token_vocabulary, model.item_token_array,
        model.demographic_vocabularies or None, model.item_counts, model.time_window,
    )  # fmt: skip
    twin(query_inputs([[]], max_history=model.config.max_history))
    twin.set_weights(model.get_weights())
    return twin


def fit_content_projection(directory: str | Path, items: pd.DataFrame) -> ContentProjection:
    """Fit the content projection (item metadata -> item vector, :mod:`towers.content`) of the
    artefact at ``directory`` on its learned item vectors, and save it there (``content.npz``).

    Raises
    ------
    FileNotFoundError
        If ``directory`` is not an artefact (no item vectors).
    """
    directory = Path(directory)
    if not (directory / "item_vectors.npy").exists():
        raise FileNotFoundError(f"{directory} is not an artefact: it has no item_vectors.npy")
    item_ids = _read_lines(directory / "vocab" / "items.txt")
    projection = ContentProjection.fit(
        frame_tokens(items, item_ids),
        np.load(directory / "item_vectors.npy"),
        np.load(directory / "vocab" / "item_counts.npy"),
    )
    projection.save(directory)
    return projection


def _read_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return text.splitlines() if text.strip() else []


def _artefact_meta(directory: Path) -> dict:
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{directory} is not a nextwatch artefact (no config.json)")
    meta = read_json(config_path)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory}: unsupported artefact format {meta.get('format_version')}")
    return meta


def tower_config(directory: Path, meta: dict) -> TowerConfig:
    """The artefact's :class:`TowerConfig`, from its ``config.json`` contents ``meta``.

    Raises
    ------
    ValueError
        If the ``tower`` entry is missing, has unknown keys or invalid values (naming the file).
    """
    try:
        return TowerConfig(**meta["tower"])
    except KeyError:
        raise ValueError(f"{directory / 'config.json'}: no 'tower' entry") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{directory / 'config.json'}: invalid 'tower' entry: {exc}") from exc


def load_artefact(directory: str | Path) -> CandidateTower:
    """Rebuild the tower saved by :func:`save_artefact`.

    Raises
    ------
    FileNotFoundError
        If ``directory`` is not an artefact directory.
    ValueError
        If its format version is unknown.
    """
    directory = Path(directory)
    meta = _artefact_meta(directory)
    config = tower_config(directory, meta)
    vocab = directory / "vocab"
    demographics = json.loads((vocab / "demographics.json").read_text()) or None
    model = CandidateTower(
        config,
        _read_lines(vocab / "items.txt"),
        _read_lines(vocab / "tokens.txt"),
        np.load(vocab / "item_tokens.npy"),
        demographics,
        np.load(vocab / "item_counts.npy"),
        tuple(meta["time_window"]),
    )
    model(query_inputs([[]], max_history=config.max_history))  # build variables
    model.load_weights(str(directory / "weights" / "tower")).expect_partial()
    return model


def load_optimizer_state(directory: str | Path) -> dict[str, np.ndarray] | None:
    """The optimizer state saved with the artefact at ``directory``, or None if it has none.

    Raises
    ------
    ValueError
        If ``optimizer.npz`` is there but unreadable (naming it).
    """
    path = Path(directory) / OPTIMIZER_FILE
    return load_arrays(path) if path.exists() else None


def load_query_encoder(directory: str | Path) -> QueryEncoder:
    """The artefact's query tower for serving, read from its plain arrays (``serving.npz``)
    without building a Keras model; artefacts written before that file existed are rebuilt
    through Keras (slower, and it runs TensorFlow beside any requests being served).

    Raises
    ------
    FileNotFoundError
        If ``directory`` is not an artefact directory.
    ValueError
        If its format is unknown or its arrays do not fit its config.
    """
    directory = Path(directory)
    meta = _artefact_meta(directory)
    if not (directory / SERVING_FILE).exists():
        log.warning("%s has no %s: building the query tower with Keras", directory, SERVING_FILE)
        return QueryEncoder.from_model(load_artefact(directory))
    vocab = directory / "vocab"
    try:
        return QueryEncoder(
            tower_config(directory, meta),
            _read_lines(vocab / "items.txt"),
            load_arrays(directory / SERVING_FILE),
            json.loads((vocab / "demographics.json").read_text()),
        )
    except ValueError as exc:
        raise ValueError(f"{directory / SERVING_FILE}: {exc}") from exc


def write_serving_arrays(directory: str | Path) -> Path:
    """Add ``serving.npz`` to an artefact written before it existed (through Keras, once).
    Returns its path."""
    directory = Path(directory)
    path = directory / SERVING_FILE
    save_arrays(path, QueryEncoder.from_model(load_artefact(directory)).arrays)
    return path


def artefact_version(directory: str | Path) -> str:
    """The version string of the artefact at ``directory``.

    Raises
    ------
    FileNotFoundError
        If ``directory`` is not an artefact directory.
    ValueError
        If it has no version.
    """
    config_path = Path(directory) / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{directory} is not a nextwatch artefact (no config.json)")
    version = read_json(config_path).get("version")
    if not version:
        raise ValueError(f"{directory} has no version (an older artefact format): retrain it")
    return str(version)
