"""Model versions on disk, and which one is serving.

Layout under ``root``::

    root/
      <version>/          an artefact directory, never modified once published
        CHECKSUMS.json    SHA-256 of every file in it, written at publication
      CURRENT             the serving version's directory name (replaced atomically)
      HISTORY             versions that were current, oldest first (for rollback)

A version is published by training into a staging directory inside ``root`` and renaming it
into place (one atomic rename on the same file system), so a reader never sees a half-written
version; a training run that dies leaves only its staging directory, which
:meth:`Registry.clean_staging` removes. ``CURRENT`` is written to a temporary file, fsynced, and
renamed over the old one. A version is checked against its checksums before it is promoted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from towers.leftovers import remove_dead, work_dir

CURRENT = "CURRENT"
HISTORY = "HISTORY"
CHECKSUMS = "CHECKSUMS.json"
STAGING_PREFIX = ".staging-"


class CorruptVersion(ValueError):
    """A published version's files differ from its checksums."""


def checksums(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under ``directory`` (but the checksum file), by relative path."""
    out = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != CHECKSUMS:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            out[path.relative_to(directory).as_posix()] = digest.hexdigest()
    return out


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
        The registry directory.
    create : bool
        Create ``root`` if it is missing (False: a missing ``root`` is an error, for commands
        that only act on an existing registry, such as a rollback).

    Raises
    ------
    FileNotFoundError
        If ``root`` is missing and ``create`` is False.
    """

    def __init__(self, root: str | Path, create: bool = True) -> None:
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise FileNotFoundError(f"{self.root} is not a model registry (no such directory)")

    def staging(self) -> Path:
        """A fresh directory inside the registry to train a new version into."""
        # The name carries the training process's ID, so that a cleanup by another run can
        # tell a live run's directory from a dead one's.
        return work_dir(self.root, STAGING_PREFIX)

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
        (staging / CHECKSUMS).write_text(json.dumps(checksums(staging), indent=1))
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
        self.verify(version)
        current = self.current()
        history = self.history()
        if current is not None and (not history or history[-1] != current.name):
            history.append(current.name)
        history.append(version)
        # The pointer first: a crash before the history is written leaves the new version
        # serving and missing from the history, which the next promote or rollback repairs
        # (both treat a current version that is not the history's last as the newest).
        write_atomic(self.root / CURRENT, version + "\n")
        write_atomic(self.root / HISTORY, "\n".join(history) + "\n")
        return self.root / version

    def history(self) -> list[str]:
        """Versions that were promoted, oldest first."""
        path = self.root / HISTORY
        if not path.exists():
            return []
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line]

    def verify(self, version: str) -> None:
        """Check a published version's files against its checksums.

        Raises
        ------
        CorruptVersion
            If a file was changed, added or removed since publication, or the checksum file is
            missing or unreadable.
        """
        directory = self.root / version
        if not (directory / "config.json").is_file():
            raise CorruptVersion(f"version {version} is no longer published: {directory} is gone")
        path = directory / CHECKSUMS
        if not path.is_file():
            raise CorruptVersion(
                f"version {version} has no {CHECKSUMS}: its files cannot be checked"
            )
        try:
            expected = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8, or not JSON
            raise CorruptVersion(f"version {version}: {path} is unreadable: {exc}") from exc
        if not isinstance(expected, dict) or not all(
            isinstance(digest, str) for digest in expected.values()
        ):
            raise CorruptVersion(
                f"version {version}: {path} is not a map of file names to SHA-256 digests"
            )
        actual = checksums(directory)
        if actual != expected:
            changed = sorted(
                name for name in expected.keys() | actual.keys()
                if expected.get(name) != actual.get(name)
            )  # fmt: skip
            raise CorruptVersion(f"version {version} differs from its checksums: {changed[:5]}")

    def rollback(self) -> Path:
        """Serve the version that was serving before the current one, and drop the current one
        from the history (so a second rollback goes one further back).

        Raises
        ------
        LookupError
            If no earlier version was ever promoted.
        CorruptVersion
            If that version's directory is gone or its files changed; nothing is switched.
        """
        current = self.current()
        history = self.history()
        if current is not None and current.name in history:
            # Whatever was appended after the serving version never served.
            history = history[: len(history) - history[::-1].index(current.name)]
        while history and current is not None and history[-1] == current.name:
            history.pop()
        if not history:
            raise LookupError(f"{self.root} has no earlier promoted version to roll back to")
        self.verify(history[-1])
        write_atomic(self.root / HISTORY, "\n".join(history) + "\n")
        write_atomic(self.root / CURRENT, history[-1] + "\n")
        return self.root / history[-1]

    def clean_staging(self) -> list[str]:
        """Remove staging directories left by training runs that died (not those of other
        processes still running: two retrains may overlap); returns their names."""
        # Also what a save into a staging directory left beside it when killed
        # (``..staging-<pid>-….partial-…``, see towers.artefact.save_artefact).
        return remove_dead(self.root, STAGING_PREFIX, mine_too=True) + remove_dead(
            self.root, "." + STAGING_PREFIX, mine_too=True
        )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the registry's lock (``flock`` on ``root/.lock``) while deciding and switching
        what serves: two retrains, or a retrain and a rollback, then cannot interleave their
        promotion and pointer writes."""
        with open(self.root / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
