"""Retraining a live service's model: warm-start the serving version on the event store's log,
publish the result into the registry, promote it only if it passes the guard, and point the
worker processes at it (they swap it in with no failed request).

It runs as its own process (``nextwatch retrain --home HOME``), so serving latency is not
affected by training beyond sharing the machine's cores. A run that dies leaves the serving
version untouched: the candidate is built in a staging directory, which the next run removes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from ranking.artefact import ranker_impressions, ranker_settings
from ranking.pipeline import train_new_user_ranker_job, train_ranker_job
from serving.pointer import POINTER, read_pointer, write_pointer
from serving.promotion import Decision, check_tolerance, guarded_promote, recent_holdout
from serving.registry import Registry
from serving.store import EventStore, open_store
from towers.artefact import NEW_USER_DIR
from towers.data import Dataset
from towers.leftovers import end_with_parent
from towers.pipeline import DataSource, retrain_artefact
from towers.train import TrainOptions
from towers.warmstart import WarmStart

log = logging.getLogger(__name__)


def store_dataset(store: EventStore, base: Dataset) -> Dataset:
    """The store's whole event log as a :class:`Dataset`, with ``base``'s item and user metadata
    plus the items added to the store from metadata (``POST /v1/items``)."""
    rows = [(e.user_id, e.item_id, e.rating, int(e.timestamp)) for _, e in store.events_since(0)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    frame["rating"] = frame["rating"].astype(float)
    added = store.items_since(0)
    items = base.items
    if added:
        extra = pd.DataFrame(
            {
                "item_id": [r.item_id for r in added],
                "title": [r.title for r in added],
                "year": [float("nan") if r.year is None else float(r.year) for r in added],
                "genres": [list(r.genres) for r in added],
                "tags": [list(r.tags) for r in added],
            }
        )
        items = pd.concat(
            [items[~items["item_id"].isin(extra["item_id"])], extra], ignore_index=True
        )
    digest = hashlib.sha256(f"{store.url}:{len(frame)}:{frame['timestamp'].max()}".encode())
    return Dataset(base.name, frame, items, base.users, digest.hexdigest())


def check_metadata_covers(parent: Path, base: Dataset, share: float = 0.5) -> None:
    """Refuse metadata that does not describe the parent's catalogue: a retrain run with another
    dataset's flags would otherwise train on the right events with the wrong titles and genres
    (and fit no content projection).

    Raises
    ------
    ValueError
        If fewer than ``share`` of the parent's items are in ``base``'s item metadata.
    """
    items = (parent / "vocab" / "items.txt").read_text(encoding="utf-8").split()
    if not items:
        return
    # Rows that say something: watched items the metadata file does not list have rows too,
    # titled by their IDs (towers.data.load_interactions).
    meta = base.items
    ids = meta["item_id"].astype(str)
    said = (meta["title"].astype(str) != ids) | meta["year"].notna()
    said |= meta["genres"].map(len).astype(bool) | meta["tags"].map(len).astype(bool)
    known = len(set(items) & set(ids[said]))
    if known < share * len(items):
        raise ValueError(
            f"the data source's item metadata ({base.name}) describes {known} of the serving "
            f"version's {len(items)} items: pass the source the home was trained on"
        )


def reconcile_pointer(home: Path, registry: Registry) -> None:
    """Point the workers at the registry's current version when a run died between promoting
    it and writing the pointer: the pointer then names another of the registry's versions, and
    the workers would serve that one until a restart. A pointer to an artefact outside the
    registry (``serve --artefact``) is left alone. Call it holding ``registry.lock()``."""
    current, pointed = registry.current(), read_pointer(home)
    if current is None or pointed is None:
        return
    current, pointed = current.resolve(), pointed.resolve()
    if pointed != current and pointed.parent == registry.root.resolve():
        log.warning("%s named %s, but %s was promoted: pointing the workers at %s",
                    POINTER, pointed.name, current.name, current.name)  # fmt: skip
        write_pointer(home, current)


def check_store_exists(store_url: str) -> None:
    """Refuse an SQLite store that does not exist (a mistyped ``--store``), which opening it
    would create empty.

    Raises
    ------
    FileNotFoundError
        Naming the file.
    """
    if store_url.lower().startswith("sqlite:///"):
        path = Path(store_url[len("sqlite:///") :])
        if not path.is_file():
            raise FileNotFoundError(f"no event store at {path} (--store {store_url})")


def retrain_home(
    home: str | Path,
    source: DataSource,
    store_url: str | None = None,
    options: TrainOptions | None = None,
    plan: WarmStart | None = None,
    holdout_fraction: float = 0.05,
    tolerance: float = 0.02,
    ranker: bool = True,
) -> Decision:
    """Warm-start HOME's serving version on its store, publish, and promote behind the guard.

    The most recent ``holdout_fraction`` of events (at most half of the new ones) is kept out of
    training and is what the candidate and the serving version are compared on. Returns the
    decision.

    Raises
    ------
    FileNotFoundError
        If HOME's registry has no serving version.
    CorruptVersion
        If the serving version's files differ from its checksums.
    ValueError
        For a tolerance or holdout fraction out of range, metadata that does not describe the
        serving version's catalogue, or too few new events.
    """
    check_tolerance(tolerance)  # before hours of training, not after
    if not (isinstance(holdout_fraction, int | float) and 0 < holdout_fraction < 1):
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction!r}")
    home = Path(home)
    registry = Registry(home / "models")
    left = registry.clean_staging()
    if left:
        log.warning("removed staging directories of runs that died: %s", left)
    with registry.lock():
        reconcile_pointer(home, registry)
    parent = registry.current()
    if parent is None:
        raise FileNotFoundError(f"{registry.root} has no serving version to retrain from")
    registry.verify(parent.name)  # a damaged parent (e.g. its content projection) is refused
    base = source.load()
    check_metadata_covers(parent, base)
    store_url = store_url or f"sqlite:///{home / 'events.db'}"
    check_store_exists(store_url)
    with open_store(store_url) as store:
        data = store_dataset(store, base)
    # New events are those after the serving version's training data. At most half of them are
    # held out, so that the candidate always has new events to learn from.
    window_end = json.loads((parent / "config.json").read_text())["time_window"][1]
    since = plan.since if plan is not None and plan.since is not None else window_end + 1
    new_events = int((data.interactions["timestamp"] >= since).sum())
    if new_events < 2:
        when = (
            f"since --since ({since})" if plan is not None and plan.since is not None
            else "since the serving version was trained"
        )  # fmt: skip
        raise ValueError(
            f"the store has {new_events} event(s) {when}: too few to both train on and check "
            "the candidate with"
        )
    holdout = recent_holdout(data.interactions, holdout_fraction, max_events=new_events // 2)
    if len(holdout) == 0:  # found now, not after hours of training and a published version
        raise ValueError(
            "the newest events only re-watch items their users had watched before: there is "
            "nothing to check a candidate on yet; retrain after more new watches"
        )
    train = data.with_interactions(data.interactions[~holdout.rows].reset_index(drop=True))
    staging = registry.staging()
    try:
        metrics = retrain_artefact(parent, train, staging, options, plan)
        if ranker and (parent / "ranker" / "config.json").exists():
            # The parent ranker's configuration and options (rated bag, label horizon, ...).
            ranker_config, ranker_options = ranker_settings(parent / "ranker")
            train_ranker_job(
                staging, train, staging / "ranker", ranker_config, ranker_options,
                **ranker_impressions(parent / "ranker"),
            )  # fmt: skip
        second = parent / NEW_USER_DIR / "ranker"
        if ranker and (second / "config.json").exists() and (staging / NEW_USER_DIR).exists():
            # The new-user tower's own ranker, on new users' impressions, as it was trained.
            ranker_config, ranker_options = ranker_settings(second)
            train_new_user_ranker_job(
                staging / NEW_USER_DIR, train, staging / NEW_USER_DIR / "ranker", ranker_config,
                ranker_options, **ranker_impressions(second),
            )  # fmt: skip
        version = registry.publish(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with registry.lock():  # another retrain or a rollback may be deciding too
        now = registry.current()
        if now != parent:
            log.warning("the serving version changed during the retrain (%s -> %s): the "
                        "candidate is compared against the new one", parent.name,
                        now.name if now else None)  # fmt: skip
        decision = guarded_promote(registry, version.name, holdout, tolerance)
        if decision.promoted:
            write_pointer(home, version)  # every worker process follows it
    log.info("retrained %s -> %s: %s", parent.name, version.name, metrics["lineage"])
    return decision


class RetrainScheduler:
    """Runs ``nextwatch retrain --home HOME`` in a separate, lower-priority process after every
    ``every_events`` new events or every ``every_seconds``, one run at a time.

    Parameters
    ----------
    home : Path
    count_events : callable
        The store's event count (checked every ``check_s``).
    every_events, every_seconds : int or float, optional
        Triggers; at least one must be set.
    extra_args : sequence of str
        More ``nextwatch retrain`` arguments (the data source of the item metadata, ...).
    runner : callable, optional
        Runs a command line and returns its exit code (default: a subprocess in the
        background priority class, :func:`background_priority`).
    """

    def __init__(
        self,
        home: Path,
        count_events: Callable[[], int],
        every_events: int | None = None,
        every_seconds: float | None = None,
        extra_args: Sequence[str] = (),
        runner: Callable[[list[str]], int] | None = None,
        check_s: float = 5.0,
    ) -> None:
        if not every_events and not every_seconds:
            raise ValueError("set every_events or every_seconds (or both) to schedule retraining")
        if (every_events is not None and every_events < 1) or (
            every_seconds is not None and not 0 < every_seconds < math.inf
        ):
            raise ValueError(
                f"every_events must be >= 1 and every_seconds > 0, got {every_events}, "
                f"{every_seconds}"
            )
        self.home = Path(home)
        self.count_events = count_events
        self.every_events = every_events
        self.every_seconds = every_seconds
        self.command = [sys.executable, "-m", "serving.cli", "retrain", "--home", str(home),
                        *extra_args]  # fmt: skip
        self.runner = runner or _run_in_background
        self.check_s = check_s
        self.runs: list[int] = []  # exit codes
        self._last_count = count_events()
        self._last_time = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="retrain-scheduler")

    def due(self) -> bool:
        """Whether a retrain is due now."""
        if self.every_events and self.count_events() - self._last_count >= self.every_events:
            return True
        return bool(self.every_seconds and time.monotonic() - self._last_time >= self.every_seconds)

    def run_once(self) -> int:
        """Retrain now (blocking); returns the process's exit code."""
        self._last_count, self._last_time = self.count_events(), time.monotonic()
        log.info("retraining: %s", " ".join(self.command))
        code = self.runner(self.command)
        self.runs.append(code)
        log.log(logging.INFO if code == 0 else logging.ERROR, "retrain exited with %d", code)
        return code

    def _loop(self) -> None:
        while not self._stop.wait(self.check_s):
            try:
                if self.due():
                    self.run_once()
            except Exception:  # noqa: BLE001  (a store hiccup must not end the schedule)
                log.exception("retrain scheduler check failed")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def background_priority() -> None:
    """Lower the calling process to the background: the ``SCHED_IDLE`` policy where the OS has it
    (Linux), else ``nice 19``. Used as a ``preexec_fn`` for the retrain process.

    A niced process still gets a share of the CPU in proportion to its weight, and a serving
    worker that wakes up for a request may wait behind it; a ``SCHED_IDLE`` process runs only
    when no normal process wants the CPU, and a waking worker preempts it at once.
    """
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
        except OSError:  # not permitted here (some containers): fall back to nice
            pass
    os.nice(19)


def _run_in_background(command: list[str]) -> int:
    """Run ``command`` in the background priority class, so that serving keeps the upper hand,
    and only while this process runs."""
    parent = os.getpid()

    def setup() -> None:
        background_priority()
        end_with_parent(parent)

    return subprocess.run(command, preexec_fn=setup, check=False).returncode
