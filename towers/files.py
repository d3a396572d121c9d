"""Plain files an artefact is made of: named arrays (``.npz``) and JSON objects, read with errors
that name the file. (:mod:`towers.artefact` re-exports these under their old import path.)"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write named arrays as an uncompressed ``.npz`` (loading is a plain read), atomically: a
    crash leaves no half-written file under ``path``."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as out:
        np.savez(out, **arrays)
    partial.replace(path)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz`` written by :func:`save_arrays`.

    Raises
    ------
    ValueError
        If the file is not a readable ``.npz`` (naming it).
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} is not a readable array file: {exc}") from exc


def read_json(path: Path) -> dict:
    """A JSON object from ``path``.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If it is not a JSON object (naming the file).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not readable as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


__all__ = ["load_arrays", "read_json", "save_arrays"]
