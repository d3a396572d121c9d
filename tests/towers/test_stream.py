"""Streaming training from shards: the scan, the input stream, lazy Adam, token bags and
BackupAndRestore."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from towers._tf import keras, tf
from towers.features import query_inputs
from towers.model import CandidateTower, TowerConfig
from towers.optim import LazyAdam
from towers.stream import scan_shards, shard_dataset, train_shards
from towers.synthetic import SyntheticConfig, generate, shard_paths
from towers.train import TrainOptions


@pytest.fixture()
def two_shards(tmp_path):
    """Shard 0: u1 a(10) b(20) c(30); shard 1: u2 b(40) a(50), u3 c(60)."""
    rows0 = [("u1", "a", 10), ("u1", "b", 20), ("u1", "c", 30)]
    rows1 = [("u2", "b", 40), ("u2", "a", 50), ("u3", "c", 60)]
    paths = []
    for i, rows in enumerate((rows0, rows1)):
        frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
        frame["rating"] = 4.0
        path = tmp_path / f"part-{i}.parquet"
        frame.to_parquet(path)
        paths.append(str(path))
    return paths


def test_scan_counts_items_users_window_and_examples(two_shards):
    scan = scan_shards(two_shards, TowerConfig(max_examples_per_user=2))
    # a: 2, b: 2, c: 2 -> ties by ID.
    assert scan.item_ids == ["a", "b", "c"]
    assert scan.item_counts.tolist() == [2, 2, 2]
    assert scan.time_window == (10, 60)
    assert (scan.users, scan.events) == (3, 6)
    # Capped at 2 per user: u1 2, u2 2, u3 1.
    assert scan.examples == 5


def test_scan_rejects_no_shards_and_missing_columns(tmp_path):
    with pytest.raises(ValueError, match="paths is empty"):
        scan_shards([], TowerConfig())
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"user_id": ["u"], "item_id": ["a"]}).to_parquet(bad)
    with pytest.raises(ValueError, match="timestamp"):
        scan_shards([str(bad)], TowerConfig())


def test_scan_skips_empty_shards_and_reads_ids_as_text(tmp_path):
    empty = tmp_path / "empty.parquet"
    frame = pd.DataFrame({"user_id": pd.Series([], dtype=str), "item_id": pd.Series([], dtype=str),
                          "timestamp": pd.Series([], dtype="int64")})  # fmt: skip
    frame.to_parquet(empty)
    with pytest.raises(ValueError, match="all 1 shard"):
        scan_shards([str(empty)], TowerConfig())
    ints = tmp_path / "ints.parquet"
    pd.DataFrame({"user_id": [1, 1], "item_id": [7, 10], "timestamp": [5, 6]}).to_parquet(ints)
    text = tmp_path / "text.parquet"
    pd.DataFrame({"user_id": ["2"], "item_id": ["7"], "timestamp": [9]}).to_parquet(text)
    scan = scan_shards([str(ints), str(empty), str(text)], TowerConfig())
    assert scan.item_ids == ["7", "10"] and scan.time_window == (5, 9) and scan.events == 3
    with pytest.raises(ValueError, match="steps_per_epoch"):
        train_shards([str(ints)], TowerConfig(), steps_per_epoch=-1)


def test_stream_examples_see_only_the_past_with_global_ages(two_shards):
    config = TowerConfig(max_history=3, max_examples_per_user=None)
    ds = shard_dataset(two_shards, config, (10, 60), batch_size=6, shuffle_buffer=2)
    got = set()
    for inputs, labels in ds.take(5):
        for history, label, age in zip(
            inputs["history"].numpy(), labels.numpy(), inputs["example_age"].numpy(), strict=True
        ):
            got.add((tuple(h.decode() for h in history if h), label.decode(), round(float(age), 3)))
    # The stream repeats, so five batches hold every example of a pass (some twice): the six
    # next-watch examples, each history strictly before its label, with ages over the whole
    # log's window (10..60), not one shard's.
    assert got == {
        ((), "a", 1.0), (("a",), "b", 0.8), (("a", "b"), "c", 0.6),
        ((), "b", 0.4), (("b",), "a", 0.2), ((), "c", 0.0),
    }  # fmt: skip


def test_lazy_adam_updates_only_gathered_rows():
    table = tf.Variable([[1.0], [2.0], [3.0]])
    opt = LazyAdam(learning_rate=0.1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(table, [1, 1]) * 0.5)  # row 1 twice: gradient 1.0
    grad = tape.gradient(loss, table)
    assert isinstance(grad, tf.IndexedSlices)
    opt.apply_gradients([(grad, table)])
    # Adam's first step moves a row by lr * g / (|g| + eps) = 0.1; other rows are untouched.
    np.testing.assert_allclose(table.numpy().ravel(), [1.0, 1.9, 3.0], atol=1e-6)
    m = opt._momentums[0].numpy().ravel()
    np.testing.assert_allclose(m, [0.0, 0.1, 0.0], atol=1e-7)  # (1 - 0.9) * 1.0


@pytest.mark.parametrize("compiled", [False, True])
def test_lazy_adam_keeps_each_rows_gradient_with_or_without_repeated_rows(compiled):
    # Rows 2 and 0 once each (indices already distinct, out of order), then row 2 twice.
    table = tf.Variable([[1.0], [2.0], [3.0]])
    opt = LazyAdam(learning_rate=0.1)

    def step(rows, signs):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(table, rows)[:, 0] * signs)
        opt.apply_gradients([(tape.gradient(loss, table), table)])

    step = tf.function(step) if compiled else step
    step(tf.constant([2, 0]), tf.constant([1.0, -3.0]))  # gradients +1 (row 2), -3 (row 0)
    # Adam's first step moves each row by lr against its gradient's sign.
    np.testing.assert_allclose(table.numpy().ravel(), [1.1, 2.0, 2.9], atol=1e-6)
    np.testing.assert_allclose(opt._momentums[0].numpy().ravel(), [-0.3, 0.0, 0.1], atol=1e-7)
    step(tf.constant([2, 2]), tf.constant([1.0, 1.0]))  # row 2's gradient sums to 2
    np.testing.assert_allclose(
        opt._momentums[0].numpy().ravel(), [-0.3, 0.0, 0.9 * 0.1 + 0.1 * 2.0], atol=1e-7
    )


def test_lazy_adam_equals_adam_when_every_row_is_touched():
    start = np.array([[1.0, -1.0], [0.5, 2.0]], np.float32)
    results = []
    for opt in (LazyAdam(0.05), keras.optimizers.Adam(0.05)):
        var = tf.Variable(start)
        for step in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.gather(var, [0, 1]) ** 2 * (step + 1))
            opt.apply_gradients([(tape.gradient(loss, var), var)])
        results.append(var.numpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5)


def test_token_bags_are_each_items_mean_token_embedding():
    ids = [f"i{i}" for i in range(6)]
    table = np.array([[1, 2], [2, 0], [3, 3], [0, 0], [1, 0], [4, 2]], np.int32)
    config = TowerConfig(output_dim=4, depth=1, max_tokens_per_item=2)
    model = CandidateTower(config, ids, ["t1", "t2", "t3", "t4"], table)
    history = np.array([["", "i0", "i2"], ["i5", "i0", "i0"]], dtype=object)
    model(query_inputs(history, max_history=3))
    rows = model.item_lookup(tf.constant(history))
    bags = tf.reshape(model._token_bags(tf.reshape(rows, [-1])), [2, 3, -1]).numpy()
    emb = model.token_embedding.embeddings.numpy()
    # Item i0 has tokens 1, 2; i2 has 3, 3 (mean = token 3); i5 has 4, 2; padding has none.
    np.testing.assert_allclose(bags[0, 1], (emb[1] + emb[2]) / 2, rtol=1e-6)
    np.testing.assert_allclose(bags[0, 2], emb[3], rtol=1e-6)
    np.testing.assert_allclose(bags[1, 0], (emb[4] + emb[2]) / 2, rtol=1e-6)
    np.testing.assert_allclose(bags[1, 2], bags[0, 1], rtol=1e-6)
    np.testing.assert_allclose(bags[0, 0], 0.0)


class _Crash(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("worker lost")


def test_backup_and_restore_resumes_after_a_crash(tmp_path):
    world = tmp_path / "world"
    generate(SyntheticConfig(num_users=60, num_items=20, num_topics=4, users_per_shard=30), world)
    config = TowerConfig(embedding_dim=8, output_dim=8, token_dim=4, max_history=5)
    options = TrainOptions(epochs=3, batch_size=16, verbose=0)
    backup = tmp_path / "backup"
    with pytest.raises(RuntimeError, match="worker lost"):
        train_shards(shard_paths(world), config, options, steps_per_epoch=3,
                     backup_dir=backup, callbacks=[_Crash()])  # fmt: skip
    assert any(backup.iterdir())  # epoch 0 was backed up
    # Another model (or other shards) must not resume from these checkpoints.
    other = TowerConfig(embedding_dim=8, output_dim=16, token_dim=4, max_history=5)
    with pytest.raises(ValueError, match="holds the checkpoints of another run"):
        train_shards(shard_paths(world), other, options, steps_per_epoch=3, backup_dir=backup)
    # The rerun continues at epoch 1: it runs epochs 1 and 2 only, then cleans up.
    result = train_shards(shard_paths(world), config, options, steps_per_epoch=3,
                          backup_dir=backup)  # fmt: skip
    assert result.metrics["epochs_run"] == 2
    assert result.model.optimizer.iterations.numpy() == 9


def _shard(path, **columns):
    frame = {"user_id": ["u1", "u1", "u2"], "item_id": ["a", "b", "a"], "timestamp": [1, 2, 3]}
    pd.DataFrame({**frame, **columns}).to_parquet(path, index=False)
    return str(path)


def test_the_scan_drops_empty_shards_and_names_bad_ones(tmp_path):
    good = _shard(tmp_path / "good.parquet")
    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"user_id": [], "item_id": [], "timestamp": []}).astype(
        {"user_id": str, "item_id": str, "timestamp": "int64"}
    ).to_parquet(empty, index=False)
    # An empty shard is not shared out: a worker given only it would never yield a batch.
    assert scan_shards([str(empty), good], TowerConfig()).paths == [good]
    bad = [
        (dict(item_id=[7.0, 8.0, 7.0]), "item_id must be text or integers, got double"),
        (dict(item_id=["a", " ", "a"]), "blank values in item_id"),
        (
            dict(timestamp=["1", "2", "3"]),
            "timestamp must be integer epoch seconds, got (large_)?string",
        ),
    ]
    for n, (columns, message) in enumerate(bad):
        path = _shard(tmp_path / f"bad{n}.parquet", **columns)
        with pytest.raises(ValueError, match=f"shard {path}.*{message}"):
            scan_shards([good, path], TowerConfig())


def test_a_failed_save_on_the_chief_keeps_the_previous_artefact(tmp_path, monkeypatch):
    from towers import stream
    from towers.distribute import ClusterRole

    world = tmp_path / "world"
    generate(SyntheticConfig(num_users=40, num_items=12, num_topics=3, users_per_shard=20), world)
    items = pd.read_parquet(world / "items.parquet")
    items.loc[0, "genres"] = None  # a null cell is an item without genres, not a crash
    config = TowerConfig(embedding_dim=8, output_dim=8, token_dim=4, max_history=5)
    result = train_shards(shard_paths(world), config, TrainOptions(epochs=1, batch_size=16,
                          verbose=0), items=items, steps_per_epoch=2)  # fmt: skip
    out = stream.save_on_chief(result, tmp_path / "art", ClusterRole(), items=items)
    before = sorted(p.name for p in out.iterdir())
    assert "items.parquet" in before and "content.npz" in before

    def dies(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(stream, "fit_content_projection", dies)
    with pytest.raises(OSError, match="disk full"):
        stream.save_on_chief(result, out, ClusterRole(), items=items)
    assert sorted(p.name for p in out.iterdir()) == before


def test_stream_batches_carry_each_users_seen_rows_for_mask_seen(two_shards):
    config = TowerConfig(max_history=1, max_examples_per_user=None, mask_seen=True)
    with pytest.raises(ValueError, match="item_ids"):
        shard_dataset(two_shards, config, (10, 60), batch_size=6)
    items = ["c", "a", "b"]  # softmax order
    ds = shard_dataset(two_shards, config, (10, 60), batch_size=6, shuffle_buffer=2, item_ids=items)
    got = set()
    for inputs, labels in ds.take(5):
        pairs = inputs["seen"].numpy()
        for n, label in enumerate(labels.numpy()):
            got.add((tuple(items[r] for r in pairs[pairs[:, 0] == n, 1]), label.decode()))
    # the bag holds one item; seen is the whole history before the label
    assert got == {
        ((), "a"), (("a",), "b"), (("a", "b"), "c"), ((), "b"), (("b",), "a"), ((), "c"),
    }  # fmt: skip
