"""Training the tower from Parquet shards that do not fit in memory, on one worker or many.

Each shard holds whole users (as :mod:`towers.synthetic` writes them, or any log cut by user).
One pass over the shards (:func:`towers.shards.scan_shards`) reads only the item, user and time
columns to build the vocabulary, the sampling frequencies, the time window and the epoch size.
Training then streams: tf.data interleaves a few shards at a time (each shard's next-watch
examples are built in memory, one shard at a time, permuted and cut into batches), shuffles
batches through a bounded buffer, and prefetches.
Memory is bounded by the open shards and the buffer, not by the log.

Under ``MultiWorkerMirroredStrategy`` (:mod:`towers.distribute`) each worker reads its own
shards (or every ``n``-th batch when there are fewer shards than workers), and every worker
runs the same number of steps per epoch (the input repeats), so none waits for another.
``BackupAndRestore`` checkpoints the training state, so a restarted worker (or a restarted
single process) continues from the last saved epoch or step.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from towers._tf import keras, tf
from towers.artefact import fit_content_projection, save_artefact, variables_only
from towers.catalogue import ITEMS_FILE
from towers.content import NoMetadataError
from towers.distribute import ClusterRole, cluster_role, strategy_for
from towers.examples import build_examples
from towers.features import item_token_table, query_inputs
from towers.index import IndexParams
from towers.model import CandidateTower, TowerConfig
from towers.seen import seen_pairs, seen_rows
from towers.shards import (
    ShardScan,
    metadata_lists,
    read_shard,
    scan_shards,
    shards_dataset,  # noqa: F401  (re-exported: towers.stream.shards_dataset is public API)
)
from towers.train import TrainOptions, TrainResult, learning_rate, optimizer_for, peak_rss_mb

log = logging.getLogger(__name__)


def shard_dataset(
    paths: Sequence[str],
    config: TowerConfig,
    time_window: tuple[int, int],
    batch_size: int,
    *,
    seed: int = 0,
    shuffle_buffer: int = 50_000,
    cycle_length: int = 2,
    shard: tuple[int, int] | None = None,
    item_ids: Sequence[str] | None = None,
) -> tf.data.Dataset:
    """A repeating, shuffled, batched stream of ``(inputs, label)`` from the shards.

    Parameters
    ----------
    paths : sequence of str
        Shards this reader streams.
    config : TowerConfig
        History length, per-user cap and new-user examples of the examples.
    time_window : tuple of int
        The whole log's window (example ages are relative to it, not to one shard).
    batch_size : int
        Examples per batch.
    seed : int
        Seeds the shard order, the per-user subsampling and the shuffle.
    shuffle_buffer : int
        About this many examples (in whole batches) in the shuffle buffer (bounds memory).
    cycle_length : int
        Shards open at once (interleaved).
    shard : tuple of int, optional
        ``(count, index)``: keep every ``count``-th batch from ``index`` (data sharding when
        workers outnumber shards).
    item_ids : sequence of str, optional
        The model's items in softmax order. Needed when ``config.mask_seen``: each batch then
        also carries ``seen``, the ``(example, softmax row)`` pairs of what each example's user
        had watched before it, which the loss leaves out.

    Notes
    -----
    Shuffling is in three layers: the shard order each pass, a full permutation of each shard's
    examples before they are cut into batches, and a buffer of batches across the open shards.
    Handing TensorFlow whole batches, not single examples to unbatch and rebatch, keeps the
    per-example work in numpy.
    """
    if config.mask_seen and item_ids is None:
        raise ValueError("item_ids is required when config.mask_seen is set")
    index = pd.Index(list(item_ids)) if config.mask_seen else None
    epochs = itertools.count()

    def examples_of(path: bytes):
        path = path.decode()
        rng_seed = seed + 7919 * next(epochs)
        ex = build_examples(
            read_shard(path),
            max_history=config.max_history,
            max_examples_per_user=config.max_examples_per_user,
            label_horizon=config.label_horizon,
            cold_examples_per_user=config.cold_examples_per_user,
            seed=rng_seed,
            time_window=time_window,
        )
        rows = seen_rows(ex, index) if index is not None else None
        order = np.random.default_rng(rng_seed).permutation(len(ex))
        for start in range(0, len(ex), batch_size):
            take = order[start : start + batch_size]
            inputs = {"history": ex.history[take], "example_age": ex.example_age[take]}
            if rows is not None:
                inputs["seen"] = seen_pairs(rows, ex.seen_start[take], ex.seen_end[take])
            yield inputs, ex.label[take]

    inputs_spec = {
        "history": tf.TensorSpec([None, config.max_history], tf.string),
        "example_age": tf.TensorSpec([None], tf.float32),
    }
    if config.mask_seen:
        inputs_spec["seen"] = tf.TensorSpec([None, 2], tf.int64)
    signature = (inputs_spec, tf.TensorSpec([None], tf.string))
    files = tf.data.Dataset.from_tensor_slices(list(paths)).shuffle(
        len(paths), seed=seed, reshuffle_each_iteration=True
    )
    ds = files.repeat().interleave(
        lambda p: tf.data.Dataset.from_generator(
            examples_of, args=(p,), output_signature=signature
        ),
        cycle_length=cycle_length,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    if shard is not None:
        ds = ds.shard(*shard)
    ds = ds.shuffle(max(1, shuffle_buffer // batch_size), seed=seed)
    options = tf.data.Options()
    # Each worker reads its own part (below); TensorFlow must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def train_shards(
    paths: Sequence[str | Path],
    config: TowerConfig | None = None,
    options: TrainOptions | None = None,
    *,
    items: pd.DataFrame | None = None,
    steps_per_epoch: int | None = None,
    shuffle_buffer: int = 50_000,
    backup_dir: str | Path | None = None,
    save_freq: int | str = "epoch",
    role: ClusterRole | None = None,
    strategy: tf.distribute.Strategy | None = None,
    scan: ShardScan | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainResult:
    """Train the tower on Parquet shards, streaming (see the module docstring).

    Parameters
    ----------
    paths : sequence of str or Path
        Interaction shards (``user_id``, ``item_id``, ``timestamp``; whole users per shard).
    config, options : TowerConfig, TrainOptions
        ``options.batch_size`` is the global batch (split across workers).
    items : pandas.DataFrame, optional
        Item metadata for the token features (none without it).
    steps_per_epoch : int, optional
        Default: one pass, ``scan.examples // batch_size``.
    shuffle_buffer : int
    backup_dir : str or Path, optional
        ``BackupAndRestore`` directory: training resumes from it after a restart.
    save_freq : int or "epoch"
        How often the backup is written (steps, or each epoch).
    role, strategy : optional
        Default: from ``TF_CONFIG`` (:mod:`towers.distribute`).
    scan : ShardScan, optional
        A previous :func:`scan_shards` of the same shards.
    callbacks : sequence of keras callbacks
        Extra callbacks for ``fit``.

    Returns
    -------
    TrainResult
        Metrics as :func:`towers.train.train_tower`, plus ``workers`` and ``steps_per_epoch``.
    """
    config = config or TowerConfig()
    options = options or TrainOptions()
    if options.epochs < 1 or options.batch_size < 1:
        raise ValueError(
            f"epochs and batch_size must be >= 1, got {options.epochs}, {options.batch_size}"
        )
    if steps_per_epoch is not None and steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1 (or None), got {steps_per_epoch}")
    role = role or cluster_role()
    strategy = strategy or strategy_for(role)
    keras.utils.set_random_seed(options.seed)
    start = time.perf_counter()
    scan = scan or scan_shards([str(p) for p in paths], config)
    items = metadata_lists(items)
    steps = steps_per_epoch or max(1, scan.examples // options.batch_size)
    token_vocab, token_table = (
        item_token_table(items, scan.item_ids, config.max_tokens_per_item)
        if items is not None and config.use_tokens
        else ([], np.zeros((len(scan.item_ids), config.max_tokens_per_item), np.int32))
    )
    with strategy.scope():
        model = CandidateTower(
            config, scan.item_ids, token_vocab, token_table, None, scan.item_counts,
            scan.time_window,
        )  # fmt: skip
        model(query_inputs([[]], max_history=config.max_history))  # build (BackupAndRestore)
        model.compile(optimizer=optimizer_for(model, learning_rate(options, steps)))

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        pipelines, me = context.num_input_pipelines, context.input_pipeline_id
        mine, shard = scan.paths[me::pipelines], None
        if len(scan.paths) < pipelines:
            mine, shard = scan.paths, (pipelines, me)
        return shard_dataset(
            mine, config, scan.time_window,
            context.get_per_replica_batch_size(options.batch_size),
            seed=options.seed + me, shuffle_buffer=shuffle_buffer, shard=shard,
            item_ids=scan.item_ids,
        )  # fmt: skip

    callbacks = list(callbacks)
    if backup_dir is not None:
        _claim_backup(Path(backup_dir), {
            "shards": _shards_checksum(scan), "items": len(scan.item_ids),
            "tower": config.to_dict(), "batch_size": options.batch_size,
        })  # fmt: skip
        callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir), save_freq=save_freq))
    if options.log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=options.log_dir, profile_batch=0))
    prep_seconds = time.perf_counter() - start
    fit_start = time.perf_counter()
    history = model.fit(
        keras.utils.experimental.DatasetCreator(dataset_fn),
        epochs=options.epochs,
        steps_per_epoch=steps,
        verbose=options.verbose,
        callbacks=callbacks,
    )
    fit_seconds = time.perf_counter() - fit_start
    trained = steps * len(history.epoch) * options.batch_size
    metrics = {
        "examples": scan.examples,
        "events": scan.events,
        "users": scan.users,
        "items": model.num_items,
        "softmax": "full" if model.full_softmax else "sampled",
        "workers": role.num_workers,
        "steps_per_epoch": steps,
        "epochs_run": len(history.epoch),
        "prepare_seconds": round(prep_seconds, 3),
        "fit_seconds": round(fit_seconds, 3),
        "train_seconds": round(prep_seconds + fit_seconds, 3),
        "examples_per_second": round(trained / fit_seconds, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        **{k: [round(float(v), 5) for v in vals] for k, vals in history.history.items()},
    }
    log.info("trained %d steps on %d workers in %.1f s", steps, role.num_workers, fit_seconds)
    return TrainResult(model, config, options, "shards", _shards_checksum(scan), metrics)


BACKUP_RUN = "nextwatch-run.json"  # what a backup directory's checkpoints were trained on


def _claim_backup(directory: Path, run: dict) -> None:
    """Record which run a backup directory belongs to, or refuse one that belongs to another
    (its checkpoints would be resumed on other data or another model: silently wrong, or a
    shape error that does not mention the backup)."""
    path = directory / BACKUP_RUN
    if path.exists():
        try:
            mine = json.loads(path.read_text())
        except ValueError:
            mine = None
        if mine != json.loads(json.dumps(run)):
            raise ValueError(
                f"backup directory {directory} holds the checkpoints of another run (other "
                f"shards, catalogue or settings; see {BACKUP_RUN}): give a new --backup-dir, "
                "or delete this one to start over"
            )
        return
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{BACKUP_RUN}.{os.getpid()}.partial")
    partial.write_text(json.dumps(run, indent=2))
    partial.replace(path)


def _shards_checksum(scan: ShardScan) -> str:
    digest = hashlib.sha256()
    for path in scan.paths:
        stat = Path(path).stat()
        digest.update(f"{Path(path).name}:{stat.st_size}".encode())
    return digest.hexdigest()


def save_on_chief(
    result: TrainResult,
    output: str | Path,
    role: ClusterRole,
    items: pd.DataFrame | None = None,
    index_params: IndexParams | None = None,
) -> Path | None:
    """Write the artefact on the chief; returns its path there, None on other workers.

    With ``items``, the artefact also gets ``items.parquet`` (for serving) and the content
    projection. Other workers save their weights to a temporary directory that is deleted, the
    same way as the chief, as tf.distribute expects every worker to take part in saving.
    """
    if not role.is_chief:
        with tempfile.TemporaryDirectory(prefix=f"worker{role.task_index}-") as tmp:
            variables_only(result.model).save_weights(str(Path(tmp) / "tower"))
        return None
    if items is None:
        return save_artefact(result, output, index_params=index_params, keep_optimizer=False)
    model = result.model
    items = metadata_lists(items)
    frame = items[["item_id", "title", "year", "genres"]].copy()
    frame["item_id"] = frame["item_id"].astype(str)
    counts = pd.Series(model.item_counts, index=model.item_ids)
    frame["popularity"] = counts.reindex(frame["item_id"]).fillna(0).to_numpy()

    def catalogue(directory: Path) -> None:  # inside the artefact before it is renamed in
        frame.to_parquet(directory / ITEMS_FILE, index=False)
        try:
            fit_content_projection(directory, items)
        except NoMetadataError as exc:
            log.warning("no content projection: %s", exc)

    return save_artefact(
        result, output, index_params=index_params, extra=catalogue, keep_optimizer=False
    )
