"""End-to-end jobs over the towers: load a dataset, split it, train, evaluate, save an artefact.

The CLI (``nextwatch train-candidates``, ``nextwatch evaluate``) and the benchmarks call these.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from towers.artefact import (
    NEW_USER_DIR,
    artefact_version,
    load_artefact,
    load_optimizer_state,
    read_json,
    save_artefact,
)
from towers.content import CONTENT_FILE, ContentProjection
from towers.data import Dataset, load_interactions
from towers.evaluate import (
    TowerScorer,
    evaluate_retrieval,
    evaluate_top_k_accuracy,
    evaluate_top_k_accuracy_at_events,
)
from towers.model import CandidateTower
from towers.movielens import ARCHIVES, load_movielens
from towers.splits import Split, make_split
from towers.train import TowerConfig, TrainOptions, train_tower
from towers.warmstart import WarmStart, warm_start

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSource:
    """Where the interactions come from: a MovieLens name, or a user's own files.

    Attributes
    ----------
    dataset : str or None
        ``ml-latest-small`` or ``ml-100k``; read from ``data_dir`` (or ``$NEXTWATCH_DATA``),
        downloaded if absent.
    data_dir : str or None
    interactions, items, users : str or None
        A user's own CSV/Parquet files (used when ``dataset`` is None).
    user_col, item_col, timestamp_col : str
        Column names in ``interactions``.
    rating_col : str or None
        The rating column, which must exist if named; None reads ``rating`` if the file has it.
    """

    dataset: str | None = "ml-latest-small"
    data_dir: str | None = None
    interactions: str | None = None
    items: str | None = None
    users: str | None = None
    user_col: str = "user"
    item_col: str = "item"
    rating_col: str | None = None
    timestamp_col: str = "timestamp"

    def __post_init__(self) -> None:
        if self.interactions:
            return
        columns = (self.user_col, self.item_col, self.rating_col or "rating", self.timestamp_col)
        given = [name for name, value in (("items", self.items), ("users", self.users)) if value]
        if columns != ("user", "item", "rating", "timestamp"):
            given.append("column names")
        if given:
            raise ValueError(
                f"{' and '.join(given)} apply to your own interactions file only "
                "(--interactions); a MovieLens dataset brings its own"
            )

    def load(self) -> Dataset:
        if self.interactions:
            return load_interactions(
                self.interactions, user_col=self.user_col, item_col=self.item_col,
                rating_col=self.rating_col, timestamp_col=self.timestamp_col,
                items_path=self.items, users_path=self.users,
            )  # fmt: skip
        if self.dataset not in ARCHIVES:
            raise ValueError(
                f"dataset must be one of {sorted(ARCHIVES)} (or give an interactions file), "
                f"got {self.dataset!r}"
            )
        return load_movielens(self.dataset, self.data_dir)


def split_dataset(data: Dataset, protocol: str | None) -> tuple[Dataset, Split | None]:
    """The training dataset for ``protocol`` (all data when None) and the split itself."""
    if protocol is None or protocol == "none":
        return data, None
    split = make_split(data.interactions, protocol)
    return data.with_interactions(split.train), split


def evaluate_tower(model: CandidateTower, train: Dataset, split: Split) -> dict:
    """The ``PROTOCOLS.md`` retrieval metrics of ``model`` on ``split``.

    tfrs-80-20 gives top-100 accuracy without filtering seen items, two ways: one query per user
    from their whole training history (``top100_accuracy``), and one query per test row, asked
    at its timestamp from the history before it (``top100_accuracy_at_event``; see
    :func:`towers.evaluate.evaluate_top_k_accuracy_at_events`).
    """
    scorer = TowerScorer(model, train)
    if split.protocol == "tfrs-80-20":
        items = scorer.item_ids
        return {
            "top100_accuracy": evaluate_top_k_accuracy(scorer, items, split, 100),
            "top100_accuracy_at_event": evaluate_top_k_accuracy_at_events(
                scorer.at, items, split, 100
            ),
        }
    metrics = evaluate_retrieval(scorer, scorer.item_ids, split)
    metrics["cold_test_dropped"] = split.cold_test_dropped
    return metrics


def train_candidates(
    source: DataSource,
    output: str | Path,
    config: TowerConfig | None = None,
    options: TrainOptions | None = None,
    protocol: str | None = None,
    new_user: TowerConfig | None = None,
) -> dict:
    """Train the tower on ``source`` (on the train part of ``protocol`` if given), evaluate it on
    the test part, and save the artefact at ``output``. With ``new_user`` (e.g.
    ``towers.presets.new_user_config``), a second tower of that configuration is trained on the
    same data with the same ``options`` into ``output/new_user``, inside the same atomic write;
    ``serving.api.Recommender`` answers users with few ratings from it.

    Returns
    -------
    dict
        The metrics written to ``output/metrics.json`` (and the second tower's, under
        ``new_user``).
    """
    data = source.load()
    train, split = split_dataset(data, protocol)
    result = train_tower(train, config, options)
    extra: dict = {"protocol": protocol or "none"}
    if split is not None:
        extra["evaluation"] = evaluate_tower(result.model, train, split)
        log.info("%s on %s: %s", protocol, data.name, json.dumps(extra["evaluation"]))
    second: dict = {}

    def add_new_user(directory: Path) -> None:
        log.info("training the new-user tower into %s", directory / NEW_USER_DIR)
        own = options
        if options is not None and options.log_dir:  # its own TensorBoard run beside the main one
            own = replace(options, log_dir=str(Path(options.log_dir) / NEW_USER_DIR))
        sub = train_tower(train, new_user, own)
        save_artefact(sub, directory / NEW_USER_DIR, {"protocol": protocol or "none"}, data=train)
        second["new_user"] = {k: v for k, v in sub.metrics.items() if not isinstance(v, list)}

    save_artefact(
        result, output, extra, data=train, extra=None if new_user is None else add_new_user
    )
    return {**result.metrics, **extra, **second}


def retrain_candidates(
    source: DataSource,
    parent: str | Path,
    output: str | Path,
    options: TrainOptions | None = None,
    plan: WarmStart | None = None,
) -> dict:
    """Warm-start the artefact ``parent`` on ``source`` (its old events and the new ones) and
    save the result at ``output``, with its lineage in ``config.json``: the parent's version,
    the data's time range, the new items and events.

    Returns
    -------
    dict
        The metrics written to ``output/metrics.json``.
    """
    return retrain_artefact(parent, source.load(), output, options, plan)


def retrain_artefact(
    parent: str | Path,
    data: Dataset,
    output: str | Path,
    options: TrainOptions | None = None,
    plan: WarmStart | None = None,
) -> dict:
    """:func:`retrain_candidates` on a loaded ``data`` (e.g. an event store's log)."""
    parent = Path(parent)
    model = load_artefact(parent)
    projection = ContentProjection.load(parent) if (parent / CONTENT_FILE).exists() else None
    plan = plan or WarmStart()
    state = load_optimizer_state(parent) if plan.continue_optimizer else None  # tables' size
    result, lineage = warm_start(model, data, plan, options, projection, state)
    times = data.interactions["timestamp"]
    lineage = {
        "parent_version": artefact_version(parent),
        "parent": str(parent.resolve()),
        "data_range": [int(times.min()), int(times.max())],
        **lineage,
    }
    log.info("warm start from %s: %s", lineage["parent_version"], json.dumps(lineage))
    second: dict = {}

    def add_new_user(directory: Path) -> None:
        # The parent's new-user tower is warm-started the same way, inside the same atomic write.
        sub = retrain_artefact(parent / NEW_USER_DIR, data, directory / NEW_USER_DIR, options, plan)
        second["new_user"] = {k: v for k, v in sub.items() if not isinstance(v, list)}

    has_second = (parent / NEW_USER_DIR / "config.json").exists()
    save_artefact(
        result, output, {"protocol": "none"}, data=data, lineage=lineage,
        extra=add_new_user if has_second else None,
    )  # fmt: skip
    return {**result.metrics, "lineage": lineage, **second}


def evaluate_artefact(
    source: DataSource, artefact: str | Path, protocol: str, force: bool = False
) -> dict:
    """Evaluate a saved tower on ``protocol``.

    Raises
    ------
    ValueError
        If the artefact was trained on other data or another protocol (its numbers would be
        leaked or meaningless), unless ``force``.
    """
    artefact = Path(artefact)
    if not (artefact / "config.json").exists():
        raise FileNotFoundError(f"{artefact} is not a nextwatch artefact (no config.json)")
    if not (artefact / "metrics.json").exists():
        raise FileNotFoundError(
            f"{artefact} has no metrics.json, which records the protocol it was trained with"
        )
    config = read_json(artefact / "config.json")
    trained_on = read_json(artefact / "metrics.json").get("protocol", "none")
    checksum = config.get("data_checksum")
    if not checksum:
        raise ValueError(f"{artefact / 'config.json'} has no data_checksum: retrain the artefact")
    data = source.load()
    if not force and trained_on != protocol:
        raise ValueError(
            f"artefact {artefact} was trained with protocol {trained_on!r}; evaluating it with "
            f"{protocol!r} would test on training data (pass force=True / --force to do it anyway)"
        )
    if not force and checksum != data.checksum:
        raise ValueError(
            f"artefact {artefact} was trained on other data than {data.name} as read now (data "
            f"checksum {checksum[:12]}… vs {data.checksum[:12]}…: other files, other contents or "
            "other columns), so its test split may overlap its training data (pass force=True / "
            "--force to do it anyway)"
        )
    train, split = split_dataset(data, protocol)
    if split is None:
        raise ValueError("protocol must name a split, got 'none'")
    return evaluate_tower(load_artefact(artefact), train, split)
