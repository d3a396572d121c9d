"""Training the candidate tower: examples, inputs, optimizer and the Keras fit.

:func:`train_tower` returns a :class:`TrainResult`; :func:`towers.artefact.save_artefact` writes
it as a self-describing artefact directory.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from towers._tf import keras, tf
from towers.checks import check_field_types
from towers.data import Dataset
from towers.examples import Examples, build_examples
from towers.features import UserFeatures, item_token_table, query_inputs
from towers.model import CandidateTower, TowerConfig
from towers.optim import FusedAdam, LazyAdam, restore_optimizer_state
from towers.seen import (
    DENSE_SEEN_MAX_CELLS,
    first_watch_table,
    seen_rows,
    with_seen,
    with_seen_mask,
)

log = logging.getLogger(__name__)


DECAYS = ("constant", "cosine")


@keras.utils.register_keras_serializable(package="nextwatch")
class CosineFromStep(keras.optimizers.schedules.LearningRateSchedule):
    """A half cosine from ``rate`` to 0 over ``steps`` optimizer steps, counted from ``start``
    (the optimizer's step count when this run began: a warm start that continues its parent's
    Adam starts at the parent's count); 0 after."""

    def __init__(self, rate: float, steps: int, start: int = 0) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.rate, self.steps, self.start = float(rate), int(steps), int(start)

    def __call__(self, step):
        done = tf.clip_by_value((tf.cast(step, tf.float32) - self.start) / self.steps, 0.0, 1.0)
        return self.rate * 0.5 * (1.0 + tf.cos(np.pi * done))

    def get_config(self) -> dict:
        return {"rate": self.rate, "steps": self.steps, "start": self.start}


@dataclass(frozen=True)
class TrainOptions:
    """How to run training (not part of the model).

    Attributes
    ----------
    epochs, batch_size, learning_rate : training schedule (Adam).
    decay : {"constant", "cosine"}
        ``cosine`` lowers the rate from ``learning_rate`` to 0 along a half cosine over this
        run's steps (Loshchilov and Hutter 2017, without restarts); ``constant`` keeps it.
    seed : int
        Seeds example subsampling, shuffling and initialisation.
    verbose : int
        Keras progress bar: 0 silent, 1 bar, 2 one line per epoch.
    log_dir : str or None
        TensorBoard log directory (loss per epoch), or None.
    """

    epochs: int = 10
    batch_size: int = 512
    learning_rate: float = 3e-3
    decay: str = "constant"
    seed: int = 0
    verbose: int = 1
    log_dir: str | None = None

    def __post_init__(self) -> None:
        check_field_types(self)
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}"
            )
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate}")
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {self.decay!r}")


@dataclass
class TrainResult:
    """A trained tower with its training record."""

    model: CandidateTower
    config: TowerConfig
    options: TrainOptions
    dataset_name: str
    data_checksum: str
    metrics: dict = field(default_factory=dict)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_tower(
    data: Dataset, config: TowerConfig, time_window: tuple[int, int] = (0, 0)
) -> CandidateTower:
    """A fresh (untrained) tower whose vocabularies come from ``data``'s interactions."""
    counts = data.interactions["item_id"].value_counts()
    # Most frequent first (ties by ID), so the sampler's and the index's head is the popular head.
    order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    item_ids = [str(i) for i, _ in order]
    item_counts = np.array([c for _, c in order], dtype=np.float64)
    token_vocab, token_table = item_token_table(data.items, item_ids, config.max_tokens_per_item)
    users = UserFeatures.from_frame(data.users)
    return CandidateTower(
        config,
        item_ids,
        token_vocab,
        token_table,
        users.vocabularies() if users else None,
        item_counts,
        time_window,
    )


def learning_rate(
    options: TrainOptions, steps_per_epoch: int, start: int = 0
) -> float | CosineFromStep:
    """The rate (a float) or schedule that ``options`` asks for, over ``options.epochs`` epochs
    of ``steps_per_epoch`` steps from optimizer step ``start``."""
    if options.decay == "cosine":
        return CosineFromStep(options.learning_rate, options.epochs * steps_per_epoch, start)
    return options.learning_rate


def optimizer_for(
    model: CandidateTower, rate: float | keras.optimizers.schedules.LearningRateSchedule
) -> keras.optimizers.Optimizer:
    """Adam at ``rate`` (a float or a schedule, :func:`learning_rate`), fused
    (:class:`towers.optim.FusedAdam`); lazy (row-sparse,
    :class:`towers.optim.LazyAdam`) under the sampled softmax, whose item rows and history
    embeddings get sparse gradients, so a step's work does not grow with the catalogue."""
    if model.full_softmax:
        return FusedAdam(rate)
    return LazyAdam(rate)


def example_inputs(examples: Examples, data: Dataset, config: TowerConfig) -> dict[str, np.ndarray]:
    """Raw model inputs for ``examples`` (joins demographics by user ID)."""
    return query_inputs(
        examples.history,
        max_history=config.max_history,
        user_features=UserFeatures.from_frame(data.users),
        user_ids=examples.user_id,
        example_age=examples.example_age,
    )


def _dataset(
    inputs: dict,
    labels: np.ndarray,
    batch: int,
    seed: int | None,
    seen: tuple[np.ndarray, Examples, int] | None = None,
) -> tf.data.Dataset:
    """Batches of ``(inputs, labels)``, shuffled by ``seed`` (in order for None). ``seen`` is
    ``(rows, examples, num_items)`` (:mod:`towers.seen`) for ``mask_seen``: each batch then
    carries ``seen``, a mask while the first-watch table fits in ``DENSE_SEEN_MAX_CELLS``
    cells, ``(example, row)`` pairs beyond."""
    table = None
    if seen is not None:
        rows, examples, num_items = seen
        if len(np.unique(examples.seen_start)) * num_items <= DENSE_SEEN_MAX_CELLS:
            table, run = first_watch_table(rows, examples.seen_start, examples.seen_end, num_items)
            length = (examples.seen_end - examples.seen_start).astype(np.int32)
            inputs = {**inputs, "seen_run": run, "seen_length": length}
        else:
            inputs = {**inputs, "seen_start": examples.seen_start, "seen_end": examples.seen_end}
    # The examples stay whole in memory; what is shuffled and batched is their indices, and
    # each batch gathers its rows at once (the same batches as shuffling the examples, with
    # no per-example work in the pipeline).
    columns = {name: tf.constant(value) for name, value in inputs.items()}
    label_column = tf.constant(labels.astype(str))
    ds = tf.data.Dataset.range(len(labels))
    if seed is not None:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch).map(
        lambda take: (
            {name: tf.gather(column, take) for name, column in columns.items()},
            tf.gather(label_column, take),
        )
    )
    if table is not None:
        ds = with_seen_mask(ds, table)
    elif seen is not None:
        ds = with_seen(ds, rows)
    return ds.prefetch(tf.data.AUTOTUNE)


def train_tower(
    data: Dataset,
    config: TowerConfig | None = None,
    options: TrainOptions | None = None,
    validation: Dataset | None = None,
    *,
    init: Callable[[Examples], CandidateTower] | None = None,
    select: Callable[[Examples], np.ndarray] | None = None,
    optimizer_state: dict[str, np.ndarray] | None = None,
) -> TrainResult:
    """Train the next-watch tower on ``data``'s interactions.

    Parameters
    ----------
    data : Dataset
        Training interactions and metadata.
    config : TowerConfig, optional
    options : TrainOptions, optional
    validation : Dataset, optional
        Interactions whose next-watch examples report a full-softmax validation loss per epoch
        (with ``config.mask_seen``, each example's earlier items left out, as in training).
    init : callable, optional
        Builds the starting model from the examples (their time window); default a fresh tower
        (:func:`build_tower`). A warm start passes the grown parent (:mod:`towers.warmstart`).
    select : callable, optional
        A boolean mask of the examples to train on (all by default).
    optimizer_state : dict, optional
        Adam's moments and step count to continue from
        (:func:`towers.optim.optimizer_state` of the model ``init`` grew); a fresh optimizer
        by default.

    Returns
    -------
    TrainResult
        With metrics ``train_seconds``, ``examples``, ``examples_per_second``, ``peak_rss_mb``,
        ``loss`` (per epoch) and ``val_loss`` when validation was given.
    """
    config = config or TowerConfig()
    options = options or TrainOptions()
    if options.epochs < 1 or options.batch_size < 1:
        raise ValueError(
            f"epochs and batch_size must be >= 1, got {options.epochs}, {options.batch_size}"
        )
    keras.utils.set_random_seed(options.seed)
    start = time.perf_counter()
    examples = build_examples(
        data.interactions,
        max_history=config.max_history,
        max_examples_per_user=config.max_examples_per_user,
        label_horizon=config.label_horizon,
        cold_examples_per_user=config.cold_examples_per_user,
        seed=options.seed,
    )
    if select is not None:
        examples = examples.subset(select(examples))
    if len(examples) == 0:
        raise ValueError("data has no interactions to learn from")
    model = init(examples) if init is not None else build_tower(data, config, examples.time_window)
    if model.num_items < 2:  # every softmax would be certain: nothing to learn
        raise ValueError(
            f"data has {model.num_items} distinct item(s): a next-watch softmax needs at least 2"
        )
    steps = math.ceil(len(examples) / options.batch_size)
    start_step = int(optimizer_state["iterations"]) if optimizer_state is not None else 0
    model.compile(optimizer=optimizer_for(model, learning_rate(options, steps, start_step)))
    if optimizer_state is not None:
        restore_optimizer_state(model.optimizer, model.trainable_variables, optimizer_state)
    seen = (
        (seen_rows(examples, model.item_ids), examples, model.num_items)
        if config.mask_seen
        else None
    )
    inputs = example_inputs(examples, data, config)
    # The history as lookup rows (the model's own vocabulary): a step then hashes no strings.
    inputs["history_rows"] = model.history_rows(inputs.pop("history"))
    train_ds = _dataset(
        inputs,
        examples.label,
        options.batch_size,
        options.seed,
        seen,
    )
    val_ds = None
    if validation is not None:
        val_ex = build_examples(
            validation.interactions, max_history=config.max_history, max_examples_per_user=None
        )
        known = np.isin(val_ex.label, model.item_ids)
        val_ex = val_ex.subset(known)
        if len(val_ex) == 0:  # refused now, not by Keras after the first epoch
            raise ValueError(
                "validation has no next-watch example whose item the training data has: "
                "nothing to validate on"
            )
        # Left out of the validation softmax as out of the training one, so the curves compare.
        val_seen = (
            (seen_rows(val_ex, model.item_ids), val_ex, model.num_items)
            if config.mask_seen
            else None
        )
        val_ds = _dataset(
            example_inputs(val_ex, validation, config), val_ex.label, 2048, None, val_seen
        )
    callbacks = []
    if options.log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=options.log_dir, profile_batch=0))
    prep_seconds = time.perf_counter() - start
    fit_start = time.perf_counter()
    history = model.fit(
        train_ds,
        epochs=options.epochs,
        verbose=options.verbose,
        validation_data=val_ds,
        callbacks=callbacks,
    )
    fit_seconds = time.perf_counter() - fit_start
    metrics = {
        "examples": len(examples),
        "items": model.num_items,
        "softmax": "full" if model.full_softmax else "sampled",
        "prepare_seconds": round(prep_seconds, 3),
        "fit_seconds": round(fit_seconds, 3),
        "train_seconds": round(prep_seconds + fit_seconds, 3),
        "examples_per_second": round(len(examples) * options.epochs / fit_seconds, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        **{k: [round(float(v), 5) for v in vals] for k, vals in history.history.items()},
    }
    log.info("trained on %d examples in %.1f s", len(examples), metrics["train_seconds"])
    return TrainResult(model, config, options, data.name, data.checksum, metrics)
