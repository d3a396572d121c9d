import numpy as np
import pandas as pd
import pytest

import towers.train
from towers._tf import tf
from towers.data import Dataset, empty_item_metadata
from towers.examples import build_examples
from towers.model import TowerConfig
from towers.seen import first_watch_table, seen_pairs, with_seen, with_seen_mask
from towers.train import TrainOptions, example_inputs, train_tower

# Two user runs in one chronological log of softmax rows: the first run (events 0-4) watches
# 3, 1, 3 (a re-watch), an item the model lacks (-1), then 0; the second (events 5-7) 2, 2, 4.
ROWS = np.array([3, 1, 3, -1, 0, 2, 2, 4])
# Examples: (seen_start, seen_end). Run 0's last example sees events 0-3; run 1's sees 5-6.
STARTS = np.array([0, 0, 5, 0, 5])
ENDS = np.array([1, 4, 5, 2, 7])
BIG = np.iinfo(np.int16).max


def test_first_watch_table_by_hand():
    table, run = first_watch_table(ROWS, STARTS, ENDS, num_items=5)
    assert table.dtype == np.int16
    # Run 0 (events 0-3): 3 first at offset 0, 1 at 1; 0 comes at event 4, after every range.
    # Run 1 (events 5-6): 2 first at offset 0 (the re-watch at 1 does not move it).
    np.testing.assert_array_equal(table, [[BIG, 1, BIG, 0, BIG], [BIG, BIG, 0, BIG, BIG]])
    np.testing.assert_array_equal(run, [0, 0, 1, 0, 1])


def test_first_watch_table_refuses_a_range_that_ends_before_it_starts():
    with pytest.raises(ValueError, match="seen_end"):
        first_watch_table(ROWS, np.array([5]), np.array([4]), num_items=5)


def _batch(ds):
    inputs, _ = next(iter(ds))
    return inputs["seen"].numpy()


def test_the_mask_holds_the_same_items_as_the_pairs():
    labels = np.zeros(len(STARTS))
    pairs = _batch(
        with_seen(
            tf.data.Dataset.from_tensors(({"seen_start": STARTS, "seen_end": ENDS}, labels)), ROWS
        )
    )
    table, run = first_watch_table(ROWS, STARTS, ENDS, num_items=5)
    inputs = {"seen_run": run, "seen_length": (ENDS - STARTS).astype(np.int32)}
    mask = _batch(with_seen_mask(tf.data.Dataset.from_tensors((inputs, labels)), table))
    expected = np.zeros((5, 5), bool)
    expected[pairs[:, 0], pairs[:, 1]] = True
    np.testing.assert_array_equal(seen_pairs(ROWS, STARTS, ENDS), pairs)  # numpy's, the same
    np.testing.assert_array_equal(mask, expected)
    # By hand: example 1 saw 3, 1 (and an unknown item); example 4 saw 2; examples 2 none.
    assert {tuple(p) for p in np.argwhere(mask)} == {(0, 3), (1, 1), (1, 3), (3, 1), (3, 3), (4, 2)}


def test_training_on_the_mask_equals_training_on_the_pairs(monkeypatch):
    rows = [(f"u{u}", f"i{(u * 7 + k * 3) % 11}", 1.0, k) for u in range(12) for k in range(6)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = sorted(set(frame["item_id"]))
    data = Dataset("mixed", frame, empty_item_metadata(items), None, "0" * 64)
    config = TowerConfig(
        embedding_dim=4, token_dim=2, output_dim=4, depth=0, max_history=3, mask_seen=True
    )
    options = TrainOptions(epochs=2, batch_size=8, learning_rate=0.05, verbose=0)
    used = []  # which form each run's batches carried
    for name in ("with_seen", "with_seen_mask"):
        real = getattr(towers.train, name)
        monkeypatch.setattr(
            towers.train, name, lambda *a, _real=real, _name=name: used.append(_name) or _real(*a)
        )
    losses = {}
    for cells in (0, 1 << 26):  # 0: no table fits, so the batches carry pairs
        monkeypatch.setattr(towers.train, "DENSE_SEEN_MAX_CELLS", cells)
        result = train_tower(data, config, options)
        losses[cells] = result.metrics["loss"]
    assert used == ["with_seen", "with_seen_mask"]
    np.testing.assert_allclose(losses[0], losses[1 << 26], rtol=1e-5)


@pytest.mark.parametrize("mask_seen", [False, True])
def test_the_validation_loss_leaves_out_what_training_leaves_out(mask_seen):
    def log(users):
        rows = [(f"u{u}", f"i{(u * 5 + k * 3) % 7}", 1.0, k) for u in users for k in range(4)]
        frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
        return Dataset("tiny", frame, empty_item_metadata([f"i{i}" for i in range(7)]), None, "0")

    config = TowerConfig(
        embedding_dim=4, token_dim=2, output_dim=4, depth=0, max_history=3, mask_seen=mask_seen
    )
    options = TrainOptions(epochs=2, batch_size=4, learning_rate=0.05, verbose=0)
    validation = log(range(6, 9))
    result = train_tower(log(range(6)), config, options, validation=validation)
    model = result.model
    # By hand: every validation example's full softmax, its user's earlier items at -inf.
    examples = build_examples(validation.interactions, max_history=3, max_examples_per_user=None)
    vectors = model(example_inputs(examples, validation, config)).numpy()
    logits = vectors @ model.item_vectors.numpy().T + model.item_bias.numpy()
    row = {item: n for n, item in enumerate(model.item_ids)}
    losses = []
    for e, label in enumerate(examples.label):
        out = logits[e].copy()
        if mask_seen:
            out[[row[i] for i in examples.seen(e) if i != label]] = -np.inf
        losses.append(np.log(np.exp(out - out.max()).sum()) + out.max() - out[row[label]])
    assert any(len(examples.seen(e)) > 0 for e in range(len(examples)))
    np.testing.assert_allclose(result.metrics["val_loss"][-1], np.mean(losses), rtol=1e-4)
