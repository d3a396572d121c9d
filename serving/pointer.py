"""The serving pointer: which artefact every worker process of a home serves.

``HOME/serving.json`` names the artefact; a worker that swaps models (``POST /v1/admin/reload``),
a retrain and a rollback rewrite it, and each worker process follows it with a
:class:`PointerWatcher`, so that a hot swap reaches all of them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from serving.registry import write_atomic

if TYPE_CHECKING:
    from serving.service import ModelSlot, Served

log = logging.getLogger("serving.serve")  # the name it logged under before this module was split
POINTER = "serving.json"  # the artefact every worker process serves


def _serving_pointer(home: Path) -> Path:
    return home / POINTER


def write_pointer(home: Path, artefact: Path) -> None:
    """Record ``artefact`` as what every worker process of this home should serve."""
    text = json.dumps({"artefact": str(Path(artefact).resolve()), "written_at": time.time()})
    write_atomic(_serving_pointer(home), text + "\n")


def read_pointer(home: Path) -> Path | None:
    path = _serving_pointer(home)
    try:
        return Path(json.loads(path.read_text())["artefact"])
    except (OSError, ValueError, KeyError):
        return None


class PointerWatcher:
    """Follows ``HOME/serving.json`` in a background thread: when another worker process has
    swapped models, this one loads the same artefact (while serving the old one).

    Parameters
    ----------
    home : Path
    slot : ModelSlot
    interval_s : float
        How often the pointer's modification time is checked (one ``stat``).
    on_swap : callable, optional
        Called with the new model after a swap (the metrics' model version).
    retry_s : float
        Wait before retrying a load that failed (doubled after each failure, up to 60 s).
    """

    def __init__(
        self,
        home: Path,
        slot: ModelSlot,
        interval_s: float = 0.5,
        on_swap: Callable[[Served], None] | None = None,
        retry_s: float = 2.0,
    ) -> None:
        self.home = home
        self.slot = slot
        self.interval_s = interval_s
        self.on_swap = on_swap
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pointer-watcher", daemon=True)
        # 0, not the pointer's current time: a swap may have landed while this worker was
        # loading the model it read from the pointer, and the first check must catch it.
        self._seen = 0
        self.retry_s = retry_s
        self._backoff_s = retry_s
        self._retry_at = 0.0

    def _mtime(self) -> int:
        try:
            return _serving_pointer(self.home).stat().st_mtime_ns
        except OSError:
            return 0

    def check(self) -> bool:
        """Load the pointed-to artefact if the pointer changed; True if a swap happened.

        A load that fails is retried on later checks (after ``retry_s``, doubling up to a
        minute), so a worker that hit a transient error does not stay on the old model."""
        mtime = self._mtime()
        if mtime == self._seen or time.monotonic() < self._retry_at:
            return False
        target = read_pointer(self.home)
        if target is None or target == self.slot.current.artefact:
            self._seen, self._backoff_s = mtime, self.retry_s
            return False
        try:
            _, new = self.slot.reload(target)
        except Exception:  # noqa: BLE001  (a bad artefact must not end the watcher)
            log.exception(
                "could not follow the serving pointer to %s; retrying in %.0f s",
                target, self._backoff_s,
            )  # fmt: skip
            self._retry_at = time.monotonic() + self._backoff_s
            self._backoff_s = min(2 * self._backoff_s, 60.0)
            return False
        self._seen, self._backoff_s = mtime, self.retry_s
        if self.on_swap is not None:
            self.on_swap(new)
        return True

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()
