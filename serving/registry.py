"""Model versions on disk, and which one is serving.

Layout under ``root``::

    root/
      <version>/          an artefact directory, never modified once published
      CURRENT             the serving version's directory name (replaced atomically)
      HISTORY             versions that were current, oldest first (for rollback)

A version is published by training into a staging directory inside ``root`` and renaming it
into place (one atomic rename on the same file system), so a reader never sees a half-written
version. ``CURRENT`` is written to a temporary file, fsynced, and renamed over the old one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

CURRENT = "CURRENT"
HISTORY = "HISTORY"
STAGING_PREFIX = ".staging-"


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself is durable
    finally:
        os.close(dir_fd)


class Registry:
    """Immutable model versions in ``root`` and a pointer to the serving one.

    Parameters
    ----------
    root : str or Path
        The registry directory (created if missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def staging(self) -> Path:
        """A fresh directory inside the registry to train a new version into."""
        return Path(tempfile.mkdtemp(dir=self.root, prefix=STAGING_PREFIX))

    def publish(self, staging: str | Path) -> Path:
        """Move a finished artefact from ``staging`` to ``root/<version>`` and return that path.

        Raises
        ------
        FileNotFoundError
            If ``staging`` holds no artefact ``config.json``.
        FileExistsError
            If that version is already published.
        """
        staging = Path(staging)
        config = staging / "config.json"
        if not config.exists():
            raise FileNotFoundError(f"staging {staging} holds no artefact (no config.json)")
        version = json.loads(config.read_text())["version"]
        target = self.root / version
        if target.exists():
            raise FileExistsError(f"version {version} is already published at {target}")
        os.replace(staging, target)
        return target

    def versions(self) -> list[str]:
        """Published versions, oldest first (version names start with their UTC time)."""
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / "config.json").exists()
        )

    def current(self) -> Path | None:
        """The serving version's directory, or None before the first promotion."""
        pointer = self.root / CURRENT
        if not pointer.exists():
            return None
        return self.root / pointer.read_text(encoding="utf-8").strip()

    def promote(self, version: str) -> Path:
        """Make ``version`` the serving one.

        Raises
        ------
        KeyError
            If ``version`` is not published.
        """
        if version not in self.versions():
            raise KeyError(f"version {version!r} is not published in {self.root}")
        current = self.current()
        history = self.history()
        if current is not None and (not history or history[-1] != current.name):
            history.append(current.name)
        history.append(version)
        write_atomic(self.root / HISTORY, "\n".join(history) + "\n")
        write_atomic(self.root / CURRENT, version + "\n")
        return self.root / version

    def history(self) -> list[str]:
        """Versions that were promoted, oldest first."""
        path = self.root / HISTORY
        if not path.exists():
            return []
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line]
