"""The fused Adam, and Adam's state carried from a parent model to its warm start
(towers.optim)."""

from __future__ import annotations

import numpy as np
import pytest

from towers._tf import keras, tf
from towers.optim import FusedAdam, LazyAdam, optimizer_state, restore_optimizer_state
from towers.train import CosineFromStep, TrainOptions, learning_rate


def test_fused_adam_steps_as_keras_adam_for_dense_and_sparse_gradients():
    # First step by hand: m = 0.1 g, v = 0.001 g^2, alpha = lr sqrt(0.001) / 0.1, so each
    # weight moves by lr * g / (|g| + eps / sqrt(0.001)), lr = 0.1 against the gradient's sign.
    var = tf.Variable([1.0, -2.0, 0.0])
    FusedAdam(0.1).apply_gradients([(tf.constant([4.0, -0.5, 0.0]), var)])
    np.testing.assert_allclose(var.numpy(), [0.9, -1.9, 0.0], atol=1e-5)
    start = np.array([[1.0, -1.0], [0.5, 2.0], [3.0, 0.0]], np.float32)
    fused, plain = tf.Variable(start), tf.Variable(start)
    f_opt, p_opt = FusedAdam(0.05), keras.optimizers.Adam(0.05)
    for step in range(4):
        for opt, var in ((f_opt, fused), (p_opt, plain)):
            with tf.GradientTape() as tape:
                if step % 2:  # a sparse gradient, row 0 gathered twice
                    loss = tf.reduce_sum(tf.gather(var, [0, 2, 0]) ** 2)
                else:
                    loss = tf.reduce_sum(var**2) + 0.5 * tf.reduce_sum(var)
            grad = tape.gradient(loss, var)
            assert isinstance(grad, tf.IndexedSlices) == bool(step % 2)
            opt.apply_gradients([(grad, var)])
    np.testing.assert_allclose(fused.numpy(), plain.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(fused.numpy(), start)
    with pytest.raises(ValueError, match="amsgrad"):
        FusedAdam(0.1, amsgrad=True)


def test_the_cosine_decay_runs_from_the_rate_to_zero_over_this_runs_steps():
    options = TrainOptions(learning_rate=0.4, epochs=2, decay="cosine")
    schedule = learning_rate(options, steps_per_epoch=5)
    got = [float(schedule(step)) for step in (0, 5, 10, 12)]
    np.testing.assert_allclose(got, [0.4, 0.2, 0.0, 0.0], atol=1e-7)  # half-way: half the rate
    later = learning_rate(options, steps_per_epoch=5, start=100)  # a continued optimizer
    np.testing.assert_allclose([float(later(100)), float(later(105))], [0.4, 0.2], atol=1e-7)
    assert learning_rate(TrainOptions(learning_rate=0.4), steps_per_epoch=5) == 0.4
    assert CosineFromStep.from_config(schedule.get_config()).steps == 10
    with pytest.raises(ValueError, match="decay"):
        TrainOptions(decay="linear")


def _step(opt, var, scale: float) -> None:
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(var**2) * scale
    opt.apply_gradients([(tape.gradient(loss, var), var)])


@pytest.mark.parametrize("kind", [keras.optimizers.Adam, FusedAdam, LazyAdam])
def test_a_continued_optimizer_steps_as_the_uninterrupted_one(kind):
    start = np.array([[1.0, -1.0], [0.5, 2.0]], np.float32)
    whole, var = kind(0.05), tf.Variable(start)
    for scale in (1.0, 2.0, 3.0):
        _step(whole, var, scale)
    first, split = kind(0.05), tf.Variable(start)
    _step(first, split, 1.0)
    state = optimizer_state(first, [split])
    assert int(state["iterations"]) == 1
    second = kind(0.05)
    restore_optimizer_state(second, [split], state)
    for scale in (2.0, 3.0):
        _step(second, split, scale)
    np.testing.assert_allclose(split.numpy(), var.numpy(), rtol=1e-6)
    # A fresh optimizer after the first step would have moved it differently.
    fresh, other = kind(0.05), tf.Variable(start)
    _step(kind(0.05), other, 1.0)
    for scale in (2.0, 3.0):
        _step(fresh, other, scale)
    assert not np.allclose(other.numpy(), var.numpy(), rtol=1e-4)


def test_a_grown_table_keeps_old_moments_and_gives_new_rows_the_mean_second_moment():
    table = tf.Variable([[1.0], [3.0]])
    opt = keras.optimizers.Adam(0.1)
    _step(opt, table, 1.0)  # gradient 2x: [2, 6]
    state = optimizer_state(opt, [table])
    np.testing.assert_allclose(state["m0"].ravel(), [0.2, 0.6], rtol=1e-6)  # 0.1 g
    np.testing.assert_allclose(state["v0"].ravel(), [0.004, 0.036], rtol=1e-5)  # 0.001 g^2
    grown = tf.Variable([[1.0], [3.0], [5.0]])
    child = keras.optimizers.Adam(0.1)
    restore_optimizer_state(child, [grown], state)
    np.testing.assert_allclose(child._momentums[0].numpy().ravel(), [0.2, 0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(
        child._velocities[0].numpy().ravel(), [0.004, 0.036, 0.02], rtol=1e-5
    )
    assert int(child.iterations.numpy()) == 1


def test_a_state_that_does_not_fit_the_model_is_refused():
    table = tf.Variable([[1.0, 2.0]])
    opt = keras.optimizers.Adam(0.1)
    _step(opt, table, 1.0)
    state = optimizer_state(opt, [table])
    with pytest.raises(ValueError, match="the model has 2"):
        restore_optimizer_state(keras.optimizers.Adam(0.1), [table, tf.Variable([1.0])], state)
    with pytest.raises(ValueError, match=r"shape \(1, 2\)"):
        restore_optimizer_state(keras.optimizers.Adam(0.1), [tf.Variable([[1.0, 2.0, 3.0]])], state)
    with pytest.raises(ValueError, match=r"lacks \['v0'\]"):
        partial = {k: v for k, v in state.items() if k != "v0"}
        restore_optimizer_state(keras.optimizers.Adam(0.1), [table], partial)
    with pytest.raises(ValueError, match="no moments"):
        optimizer_state(keras.optimizers.Adam(0.1), [tf.Variable([1.0])])
