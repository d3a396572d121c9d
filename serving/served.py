"""The model a server is serving, and its hot swap.

:class:`Served` is one loaded artefact (recommender, catalogue, content projection) plus the
items placed in it from metadata since it loaded. :class:`ModelSlot` holds the current one and
replaces it by one atomic reference assignment, so a request that started on the old model
finishes on it, and none fails during a swap.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import numbers
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from serving.api import Recommender
from serving.explain import because
from serving.items import ItemCatalogue
from serving.store import ItemRecord
from towers.artefact import NEW_USER_DIR
from towers.coldstart import onboarding_order
from towers.content import CONTENT_FILE, ContentProjection, metadata_tokens
from towers.retrieval import PLACED_SHARE

log = logging.getLogger(__name__)

# The longest list: the whole pool of popular items that onboarding_order picks from.
ONBOARDING_MAX = 300
# The list's default trade of popularity against spread, and its length, picked on validation
# users by benchmarks/cold_start.py (2026-12-01) for the tower whose item space the list spreads
# over, with one setting for both MovieLens datasets (the largest mean validation margin; each
# validation user goes down the list and rates what they have seen of it until they have rated
# five, or the list ends): 0.9 over all 300 items for the benchmark preset (the benchmark's
# default run) and for the new-user preset (--only onboarding-new-user), the tower that reads a
# new user's ratings where the model has one. The page shows the list a page at a time.
ONBOARDING_DIVERSITY = 0.9
ONBOARDING_DIVERSITY_NEW_USER = 0.9
ONBOARDING_LENGTH = 300
ONBOARDING_LENGTH_NEW_USER = 300


def _projection(directory: Path) -> ContentProjection | None:
    return ContentProjection.load(directory) if (directory / CONTENT_FILE).exists() else None


class NewItemsUnsupported(RuntimeError):
    """The serving model has no content projection, so it cannot place items from metadata."""


@dataclass
class AddedItems:
    """How far a :class:`Served` model has caught up with the items added to the store."""

    sequence: int = 0  # the store's item sequence number applied last
    checked: bool = False  # the store has been asked at least once


@dataclass(frozen=True)
class Served:
    """One loaded model version and where it came from."""

    recommender: Recommender
    catalogue: ItemCatalogue
    artefact: Path
    loaded_at: float
    metrics: dict = field(default_factory=dict)
    trained_at: str | None = None
    projection: ContentProjection | None = None
    added: AddedItems = field(default_factory=AddedItems)
    new_user_projection: ContentProjection | None = None  # the new-user tower's, if it has one

    @classmethod
    def load(cls, artefact: str | Path, placed_share: float | None = PLACED_SHARE) -> Served:
        """Load an artefact directory (tower, index, catalogue and ranker if present); items
        placed from metadata take at most ``placed_share`` of a list (``Recommender``'s)."""
        artefact = Path(artefact).resolve()
        # Histories come from the store.
        recommender = Recommender.load(artefact, users=False, placed_share=placed_share)
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
            _projection(artefact),
            new_user_projection=_projection(artefact / NEW_USER_DIR),
        )

    @property
    def version(self) -> str:
        return self.recommender.version

    def trained(self, item_id: str) -> bool:
        """Whether ``item_id`` has a trained vector (not one placed from metadata)."""
        return self.recommender.retriever.encoder.knows(str(item_id))

    def check_placeable(self) -> None:
        """Check that this model can place items from metadata: every tower it serves with has a
        content projection.

        Raises
        ------
        NewItemsUnsupported
            Naming the missing file.
        """
        if self.projection is None:
            raise NewItemsUnsupported(
                f"model {self.version} has no content projection ({CONTENT_FILE}); retrain it "
                "to add items from metadata"
            )
        if self.recommender.new_user is not None and self.new_user_projection is None:
            raise NewItemsUnsupported(
                f"model {self.version}'s new-user tower has no content projection "
                f"({NEW_USER_DIR}/{CONTENT_FILE}); retrain it to add items from metadata"
            )

    def add_items(self, records: Sequence[ItemRecord]) -> list[str]:
        """Place items from their metadata: the content projection gives each a vector, which
        is upserted into the index, and the catalogue learns its title and genres. Items the
        model was trained on keep their trained vectors (they are skipped). Returns the IDs
        placed.

        Raises
        ------
        NewItemsUnsupported
            If the artefact has no content projection.
        """
        new = [r for r in records if not self.trained(r.item_id)]
        if not new:
            return []
        self.check_placeable()
        second = self.recommender.new_user
        tokens = [metadata_tokens(r.title, r.genres, r.year, r.tags) for r in new]
        ids = [r.item_id for r in new]
        # Both towers place the item (each from its own projection) before the catalogue
        # names it, so that a new user finds it as soon as an established one does.
        vectors = self.projection.predict(tokens)
        if second is not None:
            second.place(ids, self.new_user_projection.predict(tokens))
        self.recommender.retriever.place(ids, vectors)
        frame = pd.DataFrame(
            {
                "item_id": ids,
                "title": [r.title for r in new],
                "genres": [list(r.genres) for r in new],
                "year": [np.nan if r.year is None else float(r.year) for r in new],
                "popularity": 0.0,
            }
        )
        self.recommender.add_items(frame)
        self.catalogue.add(frame)
        return ids

    def onboarding(self, n: int | None = None, diversity: float | None = None) -> list[str]:
        """The ``n`` items to ask a new user to rate first: popular enough to be known, spread
        across the item space (:func:`towers.coldstart.onboarding_order`, with ``diversity``).
        Trained items only, so that every rating moves the user's vector. The space is that of
        the tower that will read the ratings: the new-user tower where the model has one.
        ``n`` and ``diversity`` None are that tower's validated setting
        (:data:`ONBOARDING_LENGTH_NEW_USER` and :data:`ONBOARDING_DIVERSITY_NEW_USER`, or
        :data:`ONBOARDING_LENGTH` and :data:`ONBOARDING_DIVERSITY`). ``diversity`` is rounded to
        two decimals, so that at most 101 lists are ever picked and cached per model (each pick
        holds the compute lock, about 15 ms on ml-latest-small)."""
        second = self.recommender.new_user is not None
        if n is None:
            n = ONBOARDING_LENGTH_NEW_USER if second else ONBOARDING_LENGTH
        if diversity is None:
            diversity = ONBOARDING_DIVERSITY_NEW_USER if second else ONBOARDING_DIVERSITY
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        if isinstance(diversity, bool) or not isinstance(diversity, numbers.Real):
            raise ValueError(f"diversity must be a number in [0, 1], got {diversity!r}")
        if not 0 <= diversity <= 1:
            raise ValueError(f"diversity must be in [0, 1], got {diversity}")
        diversity = round(float(diversity), 2)
        orders = self.__dict__.setdefault("_onboarding", {})  # a cache on a frozen dataclass
        order = orders.get(diversity)
        if order is None:
            rec = self.recommender
            tower = rec.new_user or rec.retriever
            knows = tower.encoder.knows
            ids = [i for i in tower.index.item_ids if knows(i)]
            counts = rec.items.set_index(rec.items["item_id"].astype(str))
            popularity = (
                counts["popularity"].reindex(ids).fillna(0.0).to_numpy()
                if "popularity" in counts
                else np.zeros(len(ids))
            )
            # The greedy pick reads only its pool, the most popular items (ties: index order), so
            # only the pool's vectors are fetched; kept in index order, it orders ties the same.
            pool = np.sort(np.lexsort((np.arange(len(ids)), -popularity))[:ONBOARDING_MAX])
            pool_ids = [ids[r] for r in pool]
            vectors = tower.index.vectors(pool_ids)[:, :-1]
            rows = onboarding_order(
                vectors, popularity[pool], ONBOARDING_MAX, pool=ONBOARDING_MAX, diversity=diversity
            )
            order = orders[diversity] = [pool_ids[r] for r in rows]
        return order[:n]

    def warm(self, queries: int = 10) -> None:
        """Serve a few requests before going live, so that the first users after a swap do not
        pay for first-call costs (allocations, caches, the ranker's first batches)."""
        ids = np.asarray(self.recommender.retriever.index.item_ids, dtype=object)
        if not len(ids):
            return
        rng = np.random.default_rng(0)
        for n in range(queries):
            size = min(len(ids), 1 + (5 * n) % 50)
            history = [str(i) for i in rng.choice(ids, size=size, replace=False)]
            result = self.recommender.recommend(history=history, k=10)
            because(self.recommender, history, {}, result.item_ids)
        self.recommender.similar_items(str(ids[0]), k=10)
        # The default onboarding list: a greedy pick over 300 items, made under the service's
        # compute lock, so once per model, before it goes live.
        self.onboarding()


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
    switch_interval_s : float
        The interpreter's thread switch interval while a model loads (see
        :func:`short_switch_interval`).
    """

    def __init__(
        self,
        served: Served,
        loader: Callable[[Path], Served] = Served.load,
        collect_after_s: float = 5.0,
        switch_interval_s: float = 0.0005,
    ) -> None:
        self._served = served
        self.switch_interval_s = switch_interval_s
        self._loader = loader
        self.collect_after_s = collect_after_s
        self._swap_lock = threading.Lock()
        self.swaps = 0
        # Called with a loaded model before it is swapped in; raising refuses it (the
        # service checks that the model can serve the items added from metadata).
        self.admit: Callable[[Served], None] | None = None

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
            Whatever loading or :attr:`admit` raises (missing files, a bad checkpoint, a model
            that cannot serve the added items); the current model keeps serving.
        """
        with self._swap_lock:
            old = self._served
            target = Path(artefact) if artefact is not None else old.artefact
            with short_switch_interval(self.switch_interval_s):
                new = self._loader(target)
                new.warm()
            if self.admit is not None:
                self.admit(new)
            self._served = new
            self.swaps += 1
            # Collect the old model's reference cycles once requests in flight have let go of
            # it (cheap: the imported libraries are frozen, see freeze_imports).
            timer = threading.Timer(self.collect_after_s, gc.collect)
            timer.daemon = True
            timer.start()
            log.info("model swapped: %s -> %s (%s)", old.version, new.version, new.artefact)
            return old, new


@contextmanager
def short_switch_interval(seconds: float) -> Iterator[None]:
    """Lower the interpreter's thread switch interval (``sys.setswitchinterval``, 5 ms by
    default) for the duration of the block.

    A model loads in a thread beside the thread that serves requests. Every time the serving
    thread releases the GIL (a store query, a socket read or write, waiting for the next event)
    it must wait for the loading thread to give it back, up to one switch interval each time,
    and a request releases it a dozen times, so a request during a load could take many times
    its usual time. A shorter interval bounds each wait, at the cost of more switching while
    it lasts.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(seconds, previous))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def freeze_imports() -> None:
    """Move every object alive now (the imported libraries: TensorFlow alone is ~340,000
    tracked objects) out of the garbage collector's reach, before any model is loaded. A full
    collection then walks only the models and requests (~20,000 objects per model) instead of
    everything, and an old model, which is never frozen, is freed after a swap."""
    gc.collect()
    gc.freeze()
