"""Work directories named after the process that writes them, and the cleanup of those whose
process died (killed mid-write, so its ``finally`` never ran).

A writer creates ``<prefix><pid>-<random>`` beside its target, fills it and renames it into
place. A later writer of the same target removes the ones whose process is gone, and leaves
those of processes still running (two writers may overlap). A child process that must not
outlive the one that started it asks to be ended with it (:func:`end_with_parent`).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import tempfile
from pathlib import Path

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def work_dir(parent: Path, prefix: str) -> Path:
    """A fresh directory ``parent/<prefix><pid>-<random>``."""
    return Path(tempfile.mkdtemp(dir=parent, prefix=f"{prefix}{os.getpid()}-"))


def owner_alive(pid: str, mine_too: bool = False) -> bool:
    """Whether process ``pid`` (text) is running. This process counts as alive unless
    ``mine_too``; text that is not a process ID counts as dead."""
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return not mine_too
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_dead(parent: Path, prefix: str, mine_too: bool = False) -> list[str]:
    """Remove the entries ``parent/<prefix><pid>[-...]`` whose process is not running (see
    :func:`owner_alive`); returns their names."""
    if not parent.is_dir():
        return []
    dead = [
        p for p in parent.iterdir()
        if p.name.startswith(prefix)
        and not owner_alive(p.name[len(prefix) :].split("-", 1)[0], mine_too)
    ]  # fmt: skip
    for path in dead:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return [p.name for p in dead]


def end_with_parent(parent: int) -> None:
    """Have the calling process receive SIGTERM when ``parent`` (the thread that started it)
    ends, where the OS can (Linux's ``PR_SET_PDEATHSIG``): a scheduled retrain must not
    promote a version when nothing serves, nor an export worker hold a model in memory after
    its exporter is gone. Called in the child (a ``preexec_fn``, a pool's initializer); exits
    at once if ``parent`` is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the child runs to its end
        return
    if os.getppid() != parent:
        os._exit(1)
