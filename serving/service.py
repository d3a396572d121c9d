"""The live service's core, below HTTP: histories and new items from the event store, applied
to the model that is serving (:mod:`serving.served`).

A user's history is read from the event store on every request, incrementally: the process
keeps recent users' folded histories and asks the store only for events stored since
(:mod:`serving.histories`), so the request after an acknowledged write always sees it. Items
added from metadata are stored first, then placed in the serving model's index; every server
process follows the store's item table, so an item added through one worker is retrievable from
all of them within ``item_sync_interval_s``, and a newly swapped-in model gets them all before
its first request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from serving.api import distinct_history
from serving.api_types import Query, UnknownItemError
from serving.explain import because
from serving.histories import HistoryCache, UserState, user_state, with_user
from serving.schemas import EventIn
from serving.served import (
    ONBOARDING_DIVERSITY,
    ONBOARDING_MAX,
    AddedItems,
    ModelSlot,
    NewItemsUnsupported,
    Served,
    freeze_imports,
)
from serving.store import Event, EventStore, ItemRecord
from towers.checks import check_field_types

log = logging.getLogger(__name__)


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

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in ("rating_min", "rating_max", "max_future_s", "min_timestamp"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.rating_min > self.rating_max:
            raise ValueError(
                f"rating_min ({self.rating_min}) must be <= rating_max ({self.rating_max})"
            )
        if self.max_future_s < 0 or self.min_timestamp < 0:
            raise ValueError("max_future_s and min_timestamp must be >= 0")


class LiveService:
    """Recommendations from live histories, and event ingestion.

    Parameters
    ----------
    store : EventStore
    slot : ModelSlot
    rules : EventRules
    clock : callable
        Seconds since the epoch (``time.time``).
    item_sync_interval_s : float
        How often the store's item table is checked for items added by any process.
    history_cache_users : int
        Users whose folded histories this process keeps (:class:`serving.histories.HistoryCache`;
        0 reads every history whole).
    """

    def __init__(
        self,
        store: EventStore,
        slot: ModelSlot,
        rules: EventRules | None = None,
        clock: Callable[[], float] = time.time,
        item_sync_interval_s: float = 0.2,
        history_cache_users: int = 10_000,
    ) -> None:
        self.store = store
        self.histories = HistoryCache(store, history_cache_users)
        self.slot = slot
        self.rules = rules or EventRules()
        self.clock = clock
        if not item_sync_interval_s >= 0:
            raise ValueError(f"item_sync_interval_s must be >= 0, got {item_sync_interval_s!r}")
        self.item_sync_interval_s = item_sync_interval_s
        self._next_item_sync = 0.0
        # One request computes at a time. The HTTP app computes on its event loop (one at a
        # time anyway); this lock keeps threaded callers (tests, reloads, other embedders)
        # from running numpy in many threads at once, which passes the GIL back and forth on
        # every call and collapsed throughput under load.
        self.compute = threading.Lock()
        slot.admit = self._admit

    # ---------------------------------------------------------------------------- new items
    def _admit(self, served: Served) -> None:
        """Refuse to swap in a model that could not serve the items added from metadata.

        Raises
        ------
        NewItemsUnsupported
            If the store holds added items and ``served`` cannot place items from metadata.
        """
        try:
            served.check_placeable()
        except NewItemsUnsupported as exc:
            added = [r for r in self.store.items_since(0) if not served.trained(r.item_id)]
            if added:
                raise NewItemsUnsupported(
                    f"{exc}: the store holds {len(added)} item(s) added from metadata (e.g. "
                    f"{added[0].item_id!r}), which it could not serve"
                ) from exc

    def sync_items(self, force: bool = False) -> Served:
        """Apply items that were added to the store (by any server process) since the serving
        model last caught up, and return that model. Checks the store at most every
        ``item_sync_interval_s``, unless ``force`` or the model was swapped."""
        served = self.slot.current
        now = time.monotonic()
        if not force and served.added.checked and now < self._next_item_sync:
            return served
        self._next_item_sync = now + self.item_sync_interval_s
        placed = []
        # Read and apply under one lock: two threads syncing at once must not apply an older
        # read of an item's metadata after a newer one.
        with self.compute:
            records = self.store.items_since(served.added.sequence)
            if records:
                try:
                    placed = served.add_items(records)
                except NewItemsUnsupported as exc:
                    log.warning("%s", exc)
                served.added.sequence = max(served.added.sequence, records[-1].sequence)
        if placed:
            log.info("placed %d new item(s) from metadata: %s", len(placed), placed[:5])
        served.added.checked = True
        return served

    def add_item(self, item: ItemRecord) -> tuple[ItemRecord, bool, Served]:
        """Store an item from its metadata, durably, then place it in the serving model's index
        so that the next request can retrieve it. Returns the stored record, whether it was
        created, and the model it was placed in.

        Raises
        ------
        ValueError
            If ``item_id`` is an item the model was trained on (its vector comes from training).
        NewItemsUnsupported
            If the serving model cannot place items from metadata.
        """
        served = self.slot.current
        if served.trained(item.item_id):
            raise ValueError(
                f"item_id {item.item_id!r} is a trained item; its vector comes from training"
            )
        served.check_placeable()  # before anything is stored
        stored, created = self.store.upsert_item(item)
        return stored, created, self.sync_items(force=True)

    # ---------------------------------------------------------------------------------- reads
    def state(self, user_id: str) -> UserState:
        """What the store holds for ``user_id``: every acknowledged event and the user row."""
        return with_user(self.histories.state(user_id), self.store.get_user(user_id))

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
            Naming the bad argument (``k``, ``genres``, ``features``, ``exclude``, ``history``,
            or ``user_id`` and ``history`` both given).
        """
        for name, value in (("history", history), ("exclude", exclude), ("genres", genres)):
            if isinstance(value, str | bytes):
                raise ValueError(f"{name} must be a sequence of strings, not one string")
        if user_id is not None and history is not None:
            raise ValueError(
                "give user_id (their stored history) or history (an anonymous one), not both"
            )
        served = self.sync_items()
        rec = served.recommender
        if user_id is not None:
            state = self.state(user_id)
            merged = {**state.features, **dict(features or {})}
            known, stats = state.history, state.stats
        else:
            known = distinct_history(history or [])
            state, merged, stats = None, dict(features or {}), None
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
            "generator": result.generator,
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
        if isinstance(events, Mapping | str | bytes):
            raise EventRejected("events must be a list of event dicts")
        catalogue = self.sync_items().catalogue
        now = self.clock()
        rules = self.rules
        out = []
        for n, raw in enumerate(events):
            where = f"events[{n}]"
            try:  # the HTTP schema's checks: ID rule, types, ISO timestamps, unknown keys
                event = EventIn.model_validate(raw)
            except ValidationError as exc:
                first = exc.errors()[0]
                loc = ".".join(str(part) for part in first["loc"])
                raise EventRejected(f"{where}.{loc}: {first['msg']}") from None
            kind, item, rating = event.type, event.item_id, event.rating
            if item not in catalogue:
                # Added a moment ago through another worker? Check the store before refusing.
                catalogue = self.sync_items(force=True).catalogue
            if item not in catalogue:
                raise EventRejected(f"{where}.item_id {item!r} is not in the catalogue")
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
            ts = now if event.timestamp is None else float(event.timestamp)
            if not rules.min_timestamp <= ts <= now + rules.max_future_s:
                raise EventRejected(
                    f"{where}.timestamp {ts} is outside [{rules.min_timestamp}, now + "
                    f"{rules.max_future_s:g} s]"
                )
            out.append(Event(event.user_id, item, kind, rating, ts))
        return out

    def prepare_events(self, events: Sequence[Mapping[str, object]]) -> tuple[list[Event], str]:
        """The validated events (:meth:`validate`) and the request's fingerprint for the
        idempotency check: the first half of :meth:`add_events`, which needs the model and so
        runs where requests compute; the second half, :meth:`store_events`, only waits on the
        store and may run in another thread."""
        checked = self.validate(events)
        # The fingerprint is of the request as sent (not of server-filled timestamps), so a
        # retry of the same request matches and a different request under the same key does not.
        fingerprint = hashlib.sha256(
            json.dumps([dict(sorted(raw.items())) for raw in events], default=str).encode()
        ).hexdigest()
        return checked, fingerprint

    def store_events(
        self, checked: Sequence[Event], fingerprint: str, idempotency_key: str | None = None
    ) -> tuple[list[int], bool]:
        """Durably store events from :meth:`prepare_events` in one transaction. Returns the
        sequence numbers and whether this was a replay of an earlier request with the same
        key. Touches only the store (thread-safe), not the model."""
        result = self.store.append(checked, idempotency_key, fingerprint)
        return result.sequence_numbers, result.replayed

    def add_events(
        self, events: Sequence[Mapping[str, object]], idempotency_key: str | None = None
    ) -> tuple[list[int], bool]:
        """Validate and durably store ``events`` in one transaction. Returns the sequence
        numbers and whether this was a replay of an earlier request with the same key."""
        checked, fingerprint = self.prepare_events(events)
        return self.store_events(checked, fingerprint, idempotency_key)


__all__ = [
    "ONBOARDING_DIVERSITY",
    "ONBOARDING_MAX",
    "AddedItems",
    "freeze_imports",
    "EventRejected",
    "EventRules",
    "LiveService",
    "NewItemsUnsupported",
    "ModelSlot",
    "Served",
    "UnknownItemError",
    "UserState",
    "user_state",
]
