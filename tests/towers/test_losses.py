import numpy as np
import pytest

from towers._tf import tf
from towers.losses import full_softmax_loss, sampled_softmax_loss


def _case():
    rng = np.random.default_rng(0)
    users = tf.constant(rng.normal(size=(4, 3)), tf.float32)
    items = tf.constant(rng.normal(size=(6, 3)), tf.float32)
    bias = tf.constant(rng.normal(size=6), tf.float32)
    labels = tf.constant([0, 5, 2, 2], tf.int64)
    return users, items, bias, labels


def test_full_softmax_by_hand():
    users, items, bias, labels = _case()
    logits = users.numpy() @ items.numpy().T + bias.numpy()
    expected = np.mean(
        [
            np.log(np.exp(row).sum()) - row[lab]
            for row, lab in zip(logits, labels.numpy(), strict=True)
        ]
    )
    assert full_softmax_loss(users, labels, items, bias).numpy() == pytest.approx(
        expected, rel=1e-5
    )


def test_sampled_equals_full_when_every_item_is_sampled_once():
    users, items, bias, labels = _case()
    every = (tf.range(6, dtype=tf.int64), tf.ones((4, 1)), tf.ones(6))
    sampled = sampled_softmax_loss(users, labels, items, bias, num_sampled=6, sampled_values=every)
    full = full_softmax_loss(users, labels, items, bias)
    assert sampled.numpy() == pytest.approx(full.numpy(), rel=1e-5)


def test_log_q_correction_changes_the_loss():
    users, items, bias, labels = _case()
    every = (tf.range(6, dtype=tf.int64), tf.ones((4, 1)) * 0.5, tf.ones(6) * 0.5)
    sampled = sampled_softmax_loss(users, labels, items, bias, num_sampled=6, sampled_values=every)
    # a constant expected count shifts every logit equally, so the loss is unchanged ...
    assert sampled.numpy() == pytest.approx(
        full_softmax_loss(users, labels, items, bias).numpy(), rel=1e-5
    )
    skewed = (tf.range(6, dtype=tf.int64), tf.ones((4, 1)), tf.constant([1, 1, 1, 1, 1, 0.1]))
    # ... while down-weighting item 5's proposal raises its corrected logit and the loss
    assert (
        sampled_softmax_loss(users, labels, items, bias, num_sampled=6, sampled_values=skewed)
        > sampled
    )


def test_drawn_samples_give_a_finite_loss():
    users, items, bias, labels = _case()
    loss = sampled_softmax_loss(users, labels, items, bias, num_sampled=3, unigrams=np.arange(1, 7))
    assert np.isfinite(loss.numpy())


def test_drawing_the_whole_catalogue_is_the_full_softmax_under_any_proposal():
    users, items, bias, labels = _case()
    full = full_softmax_loss(users, labels, items, bias).numpy()
    for seed in range(3):  # a skewed proposal: the sampler's counts would be below 1
        tf.random.set_seed(seed)
        drawn = sampled_softmax_loss(users, labels, items, bias, num_sampled=6,
                                     unigrams=np.array([100, 50, 10, 5, 1, 1]))  # fmt: skip
        assert drawn.numpy() == pytest.approx(full, rel=1e-6)
