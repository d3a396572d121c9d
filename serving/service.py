"""The live service's core, below HTTP: histories from the event store, the model that is
serving, and a hot swap to a new one.

A user's history is read from the event store on every request: there is no cache, so the
request after an acknowledged write always sees it (a store read is one indexed query, tens of
microseconds on SQLite). The model is held by :class:`ModelSlot`, whose current
:class:`Served` is replaced by one atomic reference assignment, so a request that started on the
old model finishes on it, and none fails during a swap.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serving.api import Query, Recommender, UnknownItemError
from serving.explain import because
from serving.items import ItemCatalogue
from serving.store import Event, EventStore, UserRecord

log = logging.getLogger(__name__)

USER_FEATURES = ("age", "gender", "occupation", "zip_prefix")


@dataclass(frozen=True)
class Served:
    """One loaded model version and where it came from."""

    recommender: Recommender
    catalogue: ItemCatalogue
    artefact: Path
    loaded_at: float
    metrics: dict = field(default_factory=dict)
    trained_at: str | None = None

    @classmethod
    def load(cls, artefact: str | Path) -> Served:
        """Load an artefact directory (tower, index, catalogue and ranker if present)."""
        artefact = Path(artefact).resolve()
        recommender = Recommender.load(artefact)
        config = json.loads((artefact / "config.json").read_text())
        metrics_path = artefact / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        return cls(
            recommender,
            ItemCatalogue(recommender.items),
            artefact,
            time.time(),
            {
                k: v
                for k, v in metrics.items()
                # JSON has no NaN/inf; lists and dicts (loss curves) stay in the file.
                if not isinstance(v, list | dict)
                and not (isinstance(v, float) and not math.isfinite(v))
            },
            config.get("created_at"),
        )

    @property
    def version(self) -> str:
        return self.recommender.version

    def warm(self, queries: int = 50) -> None:
        """Serve a few requests before going live, so that the first users after a swap do not
        pay for first-call costs (allocations, caches, the ranker's first batches)."""
        ids = self.recommender.retriever.index.item_ids
        if not ids:
            return
        rng = np.random.default_rng(0)
        for n in range(queries):
            history = [str(i) for i in rng.choice(ids, size=min(len(ids), 1 + n % 50))]
            result = self.recommender.recommend(history=history, k=10)
            because(self.recommender, history, {}, result.item_ids)
        self.recommender.similar_items(ids[0], k=10)


class ModelSlot:
    """The serving model, swapped atomically.

    Parameters
    ----------
    served : Served
        The model to serve first.
    loader : callable
        Loads an artefact path into a :class:`Served` (``Served.load`` by default).
    collect_after_s : float
        Seconds after a swap before the old model is collected, so that requests still using
        it have finished.
    """

    def __init__(
        self,
        served: Served,
        loader: Callable[[Path], Served] = Served.load,
        collect_after_s: float = 5.0,
    ) -> None:
        self._served = served
        self._loader = loader
        self.collect_after_s = collect_after_s
        self._swap_lock = threading.Lock()
        self.swaps = 0

    @property
    def current(self) -> Served:
        return self._served  # one reference read: a request keeps the model it started with

    def reload(self, artefact: str | Path | None = None) -> tuple[Served, Served]:
        """Load ``artefact`` (default: the current one again) and swap it in.

        The new model is fully loaded before the swap, while the old one keeps serving; swaps
        are serialised. Returns ``(old, new)``.

        Raises
        ------
        Exception
            Whatever loading raises (missing files, a bad checkpoint); the current model keeps
            serving.
        """
        with self._swap_lock:
            old = self._served
            target = Path(artefact) if artefact is not None else old.artefact
            new = self._loader(target)
            new.warm()
            self._served = new
            self.swaps += 1
            # Collect the old model's reference cycles once requests in flight have let go of
            # it (cheap: the imported libraries are frozen, see freeze_imports).
            timer = threading.Timer(self.collect_after_s, gc.collect)
            timer.daemon = True
            timer.start()
            log.info("model swapped: %s -> %s (%s)", old.version, new.version, new.artefact)
            return old, new


def freeze_imports() -> None:
    """Move every object alive now (the imported libraries: TensorFlow alone is ~340,000
    tracked objects) out of the garbage collector's reach, before any model is loaded. A full
    collection then walks only the models and requests (~20,000 objects per model) instead of
    everything, and an old model, which is never frozen, is freed after a swap."""
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class UserState:
    """What the store knows about a user, as the model consumes it."""

    history: list[str]  # distinct items, by the time of their latest event, oldest first
    stats: dict[str, float]  # rating_count, rating_mean, last_timestamp
    features: dict[str, object]  # stored demographics
    events: int  # stored events, including repeats
    registered: bool  # the store has a user row


def user_state(events: Sequence[Event], user: UserRecord | None) -> UserState:
    """Fold a user's stored events (oldest first) into a history and rating stats.

    A re-watched or re-rated item counts once, at its latest event, with its latest rating.
    Watches without a rating join the history but not the rating mean.
    """
    latest: dict[str, Event] = {}
    for event in events:
        latest.pop(event.item_id, None)  # re-insert: dict order is by latest event
        latest[event.item_id] = event
    ratings = [e.rating for e in latest.values() if e.rating is not None]
    stats: dict[str, float] = {"rating_count": float(len(latest))}
    if ratings:
        stats["rating_mean"] = float(sum(ratings) / len(ratings))
    if events:
        stats["last_timestamp"] = float(max(e.timestamp for e in events))
    features: dict[str, object] = {}
    if user is not None:
        features = {f: getattr(user, f) for f in USER_FEATURES if getattr(user, f) is not None}
    return UserState(list(latest), stats, features, len(events), user is not None)


class EventRejected(ValueError):
    """An event that fails validation; the message names the field and the event's position."""


@dataclass(frozen=True)
class EventRules:
    """What a valid event is.

    Parameters
    ----------
    rating_min, rating_max : float
        The rating scale (MovieLens: 0.5 to 5).
    max_future_s : float
        How far past the server's clock a timestamp may be (clock skew).
    min_timestamp : float
        The earliest timestamp accepted (default 1970-01-01).
    """

    rating_min: float = 0.5
    rating_max: float = 5.0
    max_future_s: float = 300.0
    min_timestamp: float = 0.0


class LiveService:
    """Recommendations from live histories, and event ingestion.

    Parameters
    ----------
    store : EventStore
    slot : ModelSlot
    rules : EventRules
    clock : callable
        Seconds since the epoch (``time.time``).
    """

    def __init__(
        self,
        store: EventStore,
        slot: ModelSlot,
        rules: EventRules | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.slot = slot
        self.rules = rules or EventRules()
        self.clock = clock
        # One request computes at a time. The HTTP app computes on its event loop (one at a
        # time anyway); this lock keeps threaded callers (tests, reloads, other embedders)
        # from running numpy in many threads at once, which passes the GIL back and forth on
        # every call and collapsed throughput under load.
        self.compute = threading.Lock()

    # ---------------------------------------------------------------------------------- reads
    def state(self, user_id: str) -> UserState:
        return user_state(self.store.history(user_id), self.store.get_user(user_id))

    def recommend(
        self,
        user_id: str | None = None,
        *,
        history: Sequence[str] | None = None,
        features: Mapping[str, object] | None = None,
        k: int = 10,
        exclude: Sequence[str] = (),
        genres: Sequence[str] = (),
        rank: bool = True,
        explain: bool = True,
    ) -> dict:
        """Top ``k`` for a stored user (history and demographics from the store) or for an
        anonymous ``history`` plus ``features``; each item with its "because you watched".

        Raises
        ------
        ValueError
            Naming the bad argument (``k``, ``genres``, ``features``).
        """
        served = self.slot.current
        rec = served.recommender
        if user_id is not None:
            state = self.state(user_id)
            merged = {**state.features, **dict(features or {})}
            known, stats = state.history, state.stats
        else:
            state, merged, known, stats = None, dict(features or {}), list(history or []), None
        query = Query(
            history=known, features=merged, k=k, exclude=tuple(exclude), genres=tuple(genres),
            rank=rank, stats=stats,
        )  # fmt: skip
        with self.compute:
            result = rec.recommend_batch([query])[0]
            reasons = (
                because(rec, query.history or [], merged, result.item_ids)
                if explain
                else [None] * len(result)
            )
        items = []
        for r, reason in zip(result.items, reasons, strict=True):
            items.append(
                {
                    "item_id": r.item_id,
                    "title": r.title,
                    "genres": list(r.genres),
                    "score": r.score if math.isfinite(r.score) else None,
                    "because": None
                    if reason is None
                    else {"item_id": reason, "title": served.catalogue.title(reason)},
                }
            )
        return {
            "user_id": user_id,
            "model_version": served.version,
            "ranked": result.ranked,
            "history_length": len(query.history or []),
            "events": None if state is None else state.events,
            "ignored_history": result.ignored_history,
            "items": items,
        }

    # --------------------------------------------------------------------------------- writes
    def validate(self, events: Sequence[Mapping[str, object]]) -> list[Event]:
        """Events from request dicts (``user_id``, ``item_id``, ``type``, ``rating``,
        ``timestamp``), checked against the catalogue and :class:`EventRules`.

        Raises
        ------
        EventRejected
            Naming the field and the position of the first bad event.
        """
        catalogue = self.slot.current.catalogue
        now = self.clock()
        rules = self.rules
        out = []
        for n, raw in enumerate(events):
            where = f"events[{n}]"
            kind = raw.get("type", "rating")
            item = str(raw["item_id"])
            if item not in catalogue:
                raise EventRejected(f"{where}.item_id {item!r} is not in the catalogue")
            rating = raw.get("rating")
            if kind == "rating":
                if rating is None:
                    raise EventRejected(f"{where}.rating is required for a rating event")
                if not rules.rating_min <= float(rating) <= rules.rating_max:
                    raise EventRejected(
                        f"{where}.rating {rating} is outside [{rules.rating_min}, "
                        f"{rules.rating_max}]"
                    )
            elif rating is not None:
                raise EventRejected(f"{where}.rating must be absent for a {kind!r} event")
            ts = raw.get("timestamp")
            ts = now if ts is None else float(ts)
            if not rules.min_timestamp <= ts <= now + rules.max_future_s:
                raise EventRejected(
                    f"{where}.timestamp {ts} is outside [{rules.min_timestamp}, now + "
                    f"{rules.max_future_s:g} s]"
                )
            out.append(
                Event(
                    str(raw["user_id"]),
                    item,
                    str(kind),
                    None if rating is None else float(rating),
                    ts,
                )  # fmt: skip
            )
        return out

    def add_events(
        self, events: Sequence[Mapping[str, object]], idempotency_key: str | None = None
    ) -> tuple[list[int], bool]:
        """Validate and durably store ``events`` in one transaction. Returns the sequence
        numbers and whether this was a replay of an earlier request with the same key."""
        checked = self.validate(events)
        # The fingerprint is of the request as sent (not of server-filled timestamps), so a
        # retry of the same request matches and a different request under the same key does not.
        fingerprint = hashlib.sha256(
            json.dumps([dict(sorted(raw.items())) for raw in events], default=str).encode()
        ).hexdigest()
        result = self.store.append(checked, idempotency_key, fingerprint)
        return result.sequence_numbers, result.replayed


__all__ = [
    "EventRejected",
    "EventRules",
    "LiveService",
    "ModelSlot",
    "Served",
    "UnknownItemError",
    "UserState",
    "user_state",
]
