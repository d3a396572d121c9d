"""Synthetic interaction logs at any size, with structure a next-watch model can learn.

The generative story:

* Items belong to ``num_topics`` topics (topic sizes vary) and have a power-law popularity:
  the item of popularity rank ``r`` has weight ``r ** -item_zipf``.
* Each user has a taste, a Dirichlet mixture over topics (``topic_concentration`` < 1 makes tastes
  focused), and an activity (events) drawn from a log-normal, so a few users are very heavy.
* A user's events walk through topics: each event stays in the previous event's topic with
  probability ``stickiness`` (sessions), otherwise draws a topic from the taste; the item is drawn
  from the topic by popularity. A user watches an item at most once.
* Timestamps: a user arrives uniformly in the first 80 % of the window; gaps are exponential.
* Ratings rise with how much of the user's taste the item's topic holds.
* Item metadata: the topic and an occasional second topic as genres, a year and title words, so
  the content projection has something to learn.

So the bag of watched items reveals the taste (what a bag-of-items tower learns), and the last
watches reveal the session topic. Written user by user in chunks as Parquet shards; memory is
bounded by the chunk, not the total size.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from towers.checks import check_field_types
from towers.leftovers import remove_dead, work_dir

log = logging.getLogger(__name__)
EVENTS_DIR = "events"
USERS_DIR = "users"
ITEMS_FILE = "items.parquet"
MANIFEST = "_manifest.json"
_WORDS = np.array(
    "night city love war dark river star last king blue house road secret fire dream girl man "
    "world time heart storm ghost summer winter game shadow gold iron glass wild".split()
)


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of a synthetic log.

    Attributes
    ----------
    num_users, num_items : int
    events_per_user : float
        Mean events drawn per user before duplicates are dropped.
    activity_sigma : float
        Log-normal sigma of the user activity (heavier tail when larger).
    min_events, max_events : int
        Clip of a user's activity.
    num_topics : int
    item_zipf : float
        Popularity exponent.
    topic_concentration : float
        Dirichlet parameter of the user tastes.
    stickiness : float
        Probability that an event stays in the previous event's topic.
    start, span_days : int
        Timestamp window: ``start`` (seconds since the epoch) and its length in days.
    users_per_shard : int
        Users per Parquet shard (the unit of generation and of streaming).
    seed : int
    """

    num_users: int = 10_000
    num_items: int = 10_000
    events_per_user: float = 50.0
    activity_sigma: float = 0.8
    min_events: int = 3
    max_events: int = 2_000
    num_topics: int = 24
    item_zipf: float = 0.9
    topic_concentration: float = 0.08
    stickiness: float = 0.6
    start: int = 1_600_000_000
    span_days: int = 365
    users_per_shard: int = 20_000
    seed: int = 0

    def __post_init__(self) -> None:
        check_field_types(self)
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        for name in ("num_users", "num_items", "num_topics", "users_per_shard", "min_events"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_topics > self.num_items:
            raise ValueError(
                f"num_topics ({self.num_topics}) must not exceed num_items ({self.num_items})"
            )
        if self.max_events < self.min_events:
            raise ValueError(f"max_events ({self.max_events}) < min_events ({self.min_events})")
        if not 0.0 <= self.stickiness < 1.0:
            raise ValueError(f"stickiness must be in [0, 1), got {self.stickiness}")
        for name in ("events_per_user", "topic_concentration"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        for name in ("item_zipf", "activity_sigma"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.span_days < 1 or self.start < 0:
            raise ValueError(
                f"span_days must be >= 1 and start >= 0, got {self.span_days}, {self.start}"
            )


@dataclass(frozen=True)
class Catalogue:
    """The items of a synthetic world: topic and popularity of each item."""

    topic: np.ndarray  # int, (num_items,)
    weight: np.ndarray  # float, (num_items,), popularity weight
    topic_items: list[np.ndarray]  # item indices of each topic
    topic_cdf: list[np.ndarray]  # cumulative popularity within each topic

    @classmethod
    def draw(cls, config: SyntheticConfig, rng: np.random.Generator) -> Catalogue:
        n, k = config.num_items, config.num_topics
        # Topic sizes vary (a Dirichlet share each), every topic gets at least one item.
        share = rng.dirichlet(np.full(k, 2.0))
        topic = rng.choice(k, size=n, p=share)
        topic[rng.permutation(n)[:k]] = np.arange(k)
        rank = rng.permutation(n) + 1.0
        weight = rank ** (-config.item_zipf)
        items, cdfs = [], []
        for t in range(k):
            members = np.flatnonzero(topic == t)
            cdf = np.cumsum(weight[members])
            items.append(members)
            cdfs.append(cdf / cdf[-1] if len(cdf) else cdf)
        return cls(topic, weight, items, cdfs)


def item_id(index: np.ndarray) -> np.ndarray:
    """Raw item IDs ``"i<index>"``."""
    return np.char.add("i", np.asarray(index).astype(str))


def user_id(index: np.ndarray) -> np.ndarray:
    """Raw user IDs ``"u<index>"``."""
    return np.char.add("u", np.asarray(index).astype(str))


def item_metadata(config: SyntheticConfig, world: Catalogue, seed: int) -> pd.DataFrame:
    """Item metadata in the :class:`towers.data.Dataset` layout (genres from the topics)."""
    rng = np.random.default_rng(seed)
    n = config.num_items
    second = np.where(rng.random(n) < 0.3, rng.integers(0, config.num_topics, n), -1)
    genres = [
        [f"topic{a:02d}"] + ([f"topic{b:02d}"] if b >= 0 and b != a else [])
        for a, b in zip(world.topic.tolist(), second.tolist(), strict=True)
    ]
    # Title words lean on the topic (two of its three words come from a topic-specific pair).
    words = _WORDS[(world.topic[:, None] * 2 + np.arange(2)[None, :]) % len(_WORDS)]
    pick = rng.integers(0, 2, n)
    extra = _WORDS[rng.integers(0, len(_WORDS), n)]
    titles = np.char.add(np.char.add(words[np.arange(n), pick], " "), extra)
    ids = item_id(np.arange(n))
    return pd.DataFrame(
        {
            "item_id": ids,
            "title": np.char.add(np.char.add(titles, " #"), np.arange(n).astype(str)),
            "year": rng.integers(1950, 2026, n).astype(np.float64),
            "genres": genres,
            "tags": [[] for _ in range(n)],
        }
    )


def draw_events(
    config: SyntheticConfig, world: Catalogue, first_user: int, num_users: int, seed: int
) -> pd.DataFrame:
    """Events of users ``first_user .. first_user + num_users - 1``, chronological per user.

    Returns
    -------
    pandas.DataFrame
        ``user_id``, ``item_id`` (str), ``rating`` (float64), ``timestamp`` (int64).
    """
    rng = np.random.default_rng(seed)
    k = config.num_topics
    mu = np.log(config.events_per_user) - config.activity_sigma**2 / 2
    activity = np.clip(
        np.rint(rng.lognormal(mu, config.activity_sigma, num_users)),
        config.min_events,
        config.max_events,
    ).astype(np.int64)
    taste = rng.dirichlet(np.full(k, config.topic_concentration), num_users).astype(np.float32)
    owner = np.repeat(np.arange(num_users), activity)
    n = len(owner)
    starts = np.concatenate([[0], np.cumsum(activity)[:-1]])
    first = np.zeros(n, dtype=bool)
    first[starts] = True
    # Fresh topic draws from each user's taste (inverse CDF), then sticky sessions: an event
    # that stays copies the topic of the last fresh draw before it.
    cum = np.cumsum(taste, axis=1)
    fresh = (rng.random(n, dtype=np.float32)[:, None] > cum[owner]).sum(axis=1)
    fresh = np.minimum(fresh, k - 1)
    stay = (rng.random(n) < config.stickiness) & ~first
    last_fresh = np.maximum.accumulate(np.where(stay, 0, np.arange(n)))
    topic = fresh[last_fresh]
    items = np.empty(n, dtype=np.int64)
    u = rng.random(n)
    for t in range(k):
        where = np.flatnonzero(topic == t)
        if len(where):
            pos = np.searchsorted(world.topic_cdf[t], u[where], side="right")
            items[where] = world.topic_items[t][np.minimum(pos, len(world.topic_items[t]) - 1)]
    # Timestamps: arrival in the first 80 % of the window, exponential gaps (a few hours).
    span = config.span_days * 86_400
    arrival = config.start + rng.integers(0, int(span * 0.8), num_users)
    gaps = rng.exponential(span * 0.2 / max(config.events_per_user, 1.0), n)
    gaps[first] = 0.0
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[starts], activity)
    timestamp = (arrival[owner] + elapsed).astype(np.int64)
    affinity = taste[owner, topic]
    rating = np.clip(np.rint((2.6 + 2.4 * affinity + rng.normal(0, 0.6, n)) * 2) / 2, 0.5, 5.0)
    # A user watches an item once: keep the first event of each (user, item).
    _, keep = np.unique(owner * np.int64(config.num_items) + items, return_index=True)
    keep.sort()
    return pd.DataFrame(
        {
            "user_id": user_id(first_user + owner[keep]),
            "item_id": item_id(items[keep]),
            "rating": rating[keep],
            "timestamp": timestamp[keep],
        }
    )


def generate(config: SyntheticConfig, output: str | Path) -> dict:
    """Write a synthetic world to ``output``.

    Layout::

        items.parquet                  item metadata (item_id, title, year, genres, tags, topic)
        events/part-00000.parquet      user_id, item_id, rating, timestamp (whole users per shard,
                                       chronological within a user)
        users/part-00000.parquet       the same users as user tables (user_id, history)
        _manifest.json                 config, counts, seconds

    Returns
    -------
    dict
        The manifest.

    Raises
    ------
    FileExistsError
        If ``output`` exists and is not an empty directory (nothing is overwritten).

    The world is written into a sibling work directory and renamed to ``output`` when complete,
    so an interrupted run leaves no partial world (and a rerun does not mix in its shards).
    """
    final = Path(output)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        what = f"a synthetic world ({MANIFEST})" if (final / MANIFEST).exists() else "other files"
        raise FileExistsError(f"{final} already holds {what}: choose a new directory")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_dead(final.parent, f".{final.name}.partial-")
    output = work_dir(final.parent, f".{final.name}.partial-")
    try:
        manifest = _write_world(config, output)
        if final.exists():
            final.rmdir()  # empty, checked above
        output.rename(final)
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)
        raise
    return manifest


def _write_world(config: SyntheticConfig, output: Path) -> dict:
    output.chmod(0o755)
    (output / EVENTS_DIR).mkdir(parents=True, exist_ok=True)
    (output / USERS_DIR).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    world = Catalogue.draw(config, np.random.default_rng(config.seed))
    items = item_metadata(config, world, config.seed + 1)
    items["topic"] = world.topic
    items.to_parquet(output / ITEMS_FILE, index=False)
    events = 0
    shards = range(0, config.num_users, config.users_per_shard)
    for shard, first in enumerate(shards):
        count = min(config.users_per_shard, config.num_users - first)
        frame = draw_events(config, world, first, count, seed=config.seed + 1000 + shard)
        name = f"part-{shard:05d}.parquet"
        table = pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(table, output / EVENTS_DIR / name)
        histories = frame.groupby("user_id", sort=False)["item_id"].agg(list)
        users = pa.table({"user_id": histories.index.to_numpy(str), "history": histories.values})
        pq.write_table(users, output / USERS_DIR / name)
        events += len(frame)
        log.info("shard %d: %d users, %d events", shard, count, len(frame))
    manifest = {
        "config": asdict(config),
        "users": config.num_users,
        "items": config.num_items,
        "events": int(events),
        "shards": len(shards),
        "seconds": round(time.perf_counter() - start, 1),
    }
    (output / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def shard_paths(directory: str | Path, kind: str = EVENTS_DIR) -> list[Path]:
    """The Parquet shards under ``directory/kind`` (or ``directory`` itself), in order.

    Raises
    ------
    FileNotFoundError
        If there are none.
    """
    directory = Path(directory)
    base = directory / kind if (directory / kind).is_dir() else directory
    # items.parquet is item metadata, also when it sits beside flat shards
    paths = sorted(p for p in base.glob("*.parquet") if p.name != ITEMS_FILE)
    if not paths:
        raise FileNotFoundError(f"no Parquet shards in {base}")
    return paths
