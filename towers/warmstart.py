"""Warm-start retraining: continue a trained tower on new events instead of training from scratch.

The parent's vocabulary is kept, row for row, and the items that appeared since are appended
(most frequent first). Every parent weight is copied: an existing item keeps its ID position, its
history embedding, its softmax row and its bias, so the grown model scores the parent's items
exactly as the parent did until training moves them. A new item's softmax row and bias come from
the parent's content projection (:mod:`towers.content`), the same place ``POST /v1/items`` put it
while it had no interactions; its history embedding starts as the parent's count-weighted mean
row. Training then continues on the examples whose label is new, plus a random replay sample of
the older ones, so that the model does not forget what only old events taught it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from towers.content import ContentProjection, frame_tokens
from towers.data import Dataset
from towers.examples import Examples
from towers.features import item_tokens, query_inputs
from towers.model import CandidateTower, TowerConfig
from towers.presets import warm_start_options
from towers.train import TrainOptions, TrainResult, train_tower


@dataclass(frozen=True)
class WarmStart:
    """What a warm start trains on.

    Attributes
    ----------
    since : int
        Events at or after this timestamp (epoch seconds) are new; default: the parent's last
        training timestamp + 1.
    replay_fraction : float
        Share of the older examples replayed alongside the new ones, in [0, 1]. The default,
        0.1, was picked with the rate and epochs of :func:`towers.presets.warm_start_options`.
    continue_optimizer : bool
        Continue the parent's Adam (its moments and step count) when its state is given,
        rather than a fresh optimizer; picked on validation with the two above
        (``benchmarks/results/adam_continued/warm_start_tune.json``).
    softmax : {None, "full", "sampled"}
        The softmax the warm start trains with. None (the default): the full softmax where the
        grown catalogue fits it (``full_softmax_max_items`` of the parent's configuration), as
        ``auto`` would pick, even for a parent trained with a sampled one; else the parent's.
        A warm start runs on few examples, so the full softmax's cost per step is affordable
        there, and on ml-latest-small, whose preset trains a sampled softmax from scratch,
        validation picked it in two windows (``benchmarks/warm_start.py --tune``, shifts 1 and 2:
        ``benchmarks/results/warm_start_tune_ml_latest_small_shift1.json`` and
        ``_shift2.json``). The grown tower's configuration records what it trained with, so its
        own warm starts keep it.
    """

    since: int | None = None
    replay_fraction: float = 0.1
    continue_optimizer: bool = True
    softmax: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.replay_fraction <= 1:
            raise ValueError(f"replay_fraction must be in [0, 1], got {self.replay_fraction}")
        if self.softmax not in (None, "full", "sampled"):
            raise ValueError(f"softmax must be None, 'full' or 'sampled', got {self.softmax!r}")


def _new_items(parent: CandidateTower, interactions: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Items of ``interactions`` the parent lacks (most frequent first, ties by ID), and the
    interaction count of every item of the grown vocabulary."""
    counts = interactions["item_id"].astype(str).value_counts()
    known = set(parent.item_ids)
    fresh = sorted(
        ((i, c) for i, c in counts.items() if i not in known), key=lambda kv: (-kv[1], kv[0])
    )
    new_ids = [i for i, _ in fresh]
    all_counts = counts.reindex(parent.item_ids + new_ids).fillna(0).to_numpy(np.float64)
    return new_ids, all_counts


def _token_rows(
    parent: CandidateTower, items: pd.DataFrame, new_ids: list[str]
) -> np.ndarray | None:
    """The parent's per-item token rows, then rows for ``new_ids`` in the parent's token
    vocabulary (tokens it has no embedding for are dropped)."""
    if parent.item_token_array is None:
        return None
    width = parent.config.max_tokens_per_item
    index = {t: i + 1 for i, t in enumerate(parent.token_vocabulary)}
    meta = items.set_index(items["item_id"].astype(str))
    rows = np.zeros((len(new_ids), width), np.int32)
    for r, item in enumerate(new_ids):
        if item not in meta.index:
            continue
        m = meta.loc[item]
        tokens = item_tokens(str(m["title"]), float(m["year"]), m["genres"], m["tags"], width)
        kept = [index[t] for t in tokens if t in index][:width]
        rows[r, : len(kept)] = kept
    return np.concatenate([np.asarray(parent.item_token_array, np.int32), rows])


def grow(
    parent: CandidateTower,
    data: Dataset,
    time_window: tuple[int, int],
    projection: ContentProjection | None = None,
    config: TowerConfig | None = None,
) -> tuple[CandidateTower, list[str]]:
    """A built tower with the parent's vocabulary plus ``data``'s new items, every parent weight
    copied (see the module docstring). Returns the tower and the new item IDs. ``config``
    (default: the parent's) may change only what does not shape a weight, such as the softmax.

    Raises
    ------
    ValueError
        If ``projection`` does not match the parent's item rows.
    """
    new_ids, counts = _new_items(parent, data.interactions)
    child = CandidateTower(
        config or parent.config,
        parent.item_ids + new_ids,
        parent.token_vocabulary,
        _token_rows(parent, data.items, new_ids),
        parent.demographic_vocabularies or None,
        counts,
        time_window,
    )
    child(query_inputs([[]], max_history=parent.config.max_history))  # build the variables
    old_rows = parent.item_matrix()
    if new_ids and projection is not None:
        if projection.dim != old_rows.shape[1]:
            raise ValueError(
                f"projection gives {projection.dim}-d rows; the parent's are {old_rows.shape[1]}-d"
            )
        new_rows = projection.predict(frame_tokens(data.items, new_ids))
    else:  # no metadata model: the parent's count-weighted mean row
        weight = np.log1p(parent.item_counts)
        new_rows = np.tile(weight @ old_rows / max(weight.sum(), 1e-12), (len(new_ids), 1))
    rows = np.concatenate([old_rows, new_rows]).astype(np.float32)
    child.item_vectors.assign(rows[:, :-1])
    child.item_bias.assign(rows[:, -1])
    history = parent.history_embedding.embeddings.numpy()
    weight = np.log1p(parent.item_counts)
    mean_row = weight @ history[2:] / max(weight.sum(), 1e-12)
    child.history_embedding.embeddings.assign(
        np.concatenate([history, np.tile(mean_row, (len(new_ids), 1))]).astype(np.float32)
    )
    if child.use_tokens:
        child.token_embedding.embeddings.assign(parent.token_embedding.embeddings)
    for col, layer in parent.demographic_embeddings.items():
        child.demographic_embeddings[col].embeddings.assign(layer.embeddings)
    for mine, theirs in zip(child.tower, parent.tower, strict=True):
        mine.set_weights(theirs.get_weights())
    return child, new_ids


def _warm_config(parent: CandidateTower, data: Dataset, softmax: str | None) -> TowerConfig:
    """The parent's configuration with the softmax :attr:`WarmStart.softmax` asks for."""
    if softmax is not None:
        return replace(parent.config, softmax=softmax)
    limit = parent.config.full_softmax_max_items
    if parent.config.softmax != "sampled" or parent.num_items > limit:
        return parent.config  # no need to count the new items in the log
    if parent.num_items + len(_new_items(parent, data.interactions)[0]) <= limit:
        return replace(parent.config, softmax="auto")  # full, and sampled if it outgrows it
    return parent.config


def warm_start(
    parent: CandidateTower,
    data: Dataset,
    plan: WarmStart | None = None,
    options: TrainOptions | None = None,
    projection: ContentProjection | None = None,
    optimizer_state: dict[str, np.ndarray] | None = None,
) -> tuple[TrainResult, dict]:
    """Continue ``parent`` on ``data`` (the whole log: old and new events; histories need both).

    Returns
    -------
    TrainResult
        The grown, further-trained tower.
    dict
        Its lineage: ``new_items``, ``new_events``, ``replayed_examples``, ``since``,
        ``replay_fraction``, ``optimizer`` (continued or fresh) and ``softmax`` (full or sampled).

    ``options`` default to :func:`towers.presets.warm_start_options` for ``data``'s name (those
    of ``nextwatch retrain``), not to a fresh training's. ``optimizer_state``, the parent's Adam
    moments and step count (:func:`towers.optim.optimizer_state`), continues the parent's
    optimizer if ``plan.continue_optimizer`` (new items' rows start with zero first moments);
    without it, or without that flag, the optimizer starts fresh.

    Raises
    ------
    ValueError
        If ``data`` has no event at or after ``since``.
    """
    plan = plan or WarmStart()
    options = options or warm_start_options(verbose=0, dataset=data.name)
    since = plan.since if plan.since is not None else parent.time_window[1] + 1
    times = data.interactions["timestamp"].to_numpy()
    new_events = int((times >= since).sum())
    if new_events == 0:
        raise ValueError(f"data has no events at or after since={since}: nothing to learn")
    grown: dict = {}
    config = _warm_config(parent, data, plan.softmax)

    def init(examples: Examples) -> CandidateTower:
        model, grown["new_items"] = grow(parent, data, examples.time_window, projection, config)
        return model

    def select(examples: Examples) -> np.ndarray:
        rng = np.random.default_rng(options.seed)
        new = examples.timestamp >= since
        replay = ~new & (rng.random(len(examples)) < plan.replay_fraction)
        grown["replayed_examples"] = int(replay.sum())
        return new | replay

    result = train_tower(
        data, config, options, init=init, select=select,
        optimizer_state=optimizer_state if plan.continue_optimizer else None,
    )  # fmt: skip
    lineage = {
        "since": int(since),
        "new_events": new_events,
        "new_items": len(grown["new_items"]),
        "replayed_examples": grown["replayed_examples"],
        "replay_fraction": plan.replay_fraction,
        "optimizer": "continued" if plan.continue_optimizer and optimizer_state else "fresh",
        "softmax": "full" if result.model.full_softmax else "sampled",
    }
    return result, lineage


__all__ = ["WarmStart", "grow", "warm_start"]
