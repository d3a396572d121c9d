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


# (example, item row) pairs of what each example's user had watched before it. Example 0 watched
# items 0 and 1 (0 is its own label: a re-watch, so it stays); example 1 watched 3; examples 2
# and 3 nothing.
SEEN = tf.constant([[0, 0], [0, 1], [1, 3]], tf.int64)


def _full_by_hand(users, items, bias, labels, left_out):
    logits = users.numpy() @ items.numpy().T + bias.numpy()
    losses = []
    for row, lab, out in zip(logits, labels.numpy(), left_out, strict=True):
        kept = [j for j in range(len(row)) if j == lab or j not in out]
        losses.append(np.log(np.exp(row[kept]).sum()) - row[lab])
    return np.mean(losses)


def test_seen_items_leave_the_full_softmax_but_never_the_label():
    users, items, bias, labels = _case()
    expected = _full_by_hand(users, items, bias, labels, [{1}, {3}, set(), set()])
    got = full_softmax_loss(users, labels, items, bias, SEEN).numpy()
    assert got == pytest.approx(expected, rel=1e-5)
    assert got < full_softmax_loss(users, labels, items, bias).numpy()  # fewer competitors


def test_an_item_seen_many_times_is_left_out_once():
    # A re-watched item comes as one pair per watch: 300 copies (more than a byte counts)
    # leave the same softmax as one.
    users, items, bias, labels = _case()
    repeated = tf.concat([SEEN, tf.tile(tf.constant([[1, 3]], tf.int64), [300, 1])], axis=0)
    expected = _full_by_hand(users, items, bias, labels, [{1}, {3}, set(), set()])
    got = full_softmax_loss(users, labels, items, bias, repeated).numpy()
    assert got == pytest.approx(expected, rel=1e-5)


def test_seen_items_get_no_gradient():
    users, items, bias, labels = _case()
    with tf.GradientTape() as tape:
        tape.watch(bias)
        loss = full_softmax_loss(users[:1], labels[:1], items, bias, SEEN[:2])
    grad = tape.gradient(loss, bias).numpy()
    # example 0 (label 0) saw items 0 and 1: item 1 is left out, so its bias gets nothing;
    # the label's gradient is p - 1 < 0, every other item's is its probability > 0
    assert grad[1] == 0.0
    assert grad[0] < 0 and (grad[[2, 3, 4, 5]] > 0).all()


def test_sampled_with_seen_equals_full_with_seen_when_every_item_is_sampled_once():
    users, items, bias, labels = _case()
    every = (tf.range(6, dtype=tf.int64), tf.ones((4, 1)), tf.ones(6))
    sampled = sampled_softmax_loss(
        users, labels, items, bias, num_sampled=6, sampled_values=every, seen=SEEN
    )
    full = full_softmax_loss(users, labels, items, bias, SEEN)
    assert sampled.numpy() == pytest.approx(full.numpy(), rel=1e-5)


def test_sampled_with_nothing_seen_is_tensorflows_sampled_softmax():
    users, items, bias, labels = _case()
    # Three negatives with a skewed proposal; item 2 is an accidental hit for examples 2 and 3.
    draw = (
        tf.constant([1, 2, 4], tf.int64),
        tf.constant([[0.5], [0.2], [0.3], [0.3]]),
        tf.constant([0.7, 0.4, 0.9]),
    )
    nothing = tf.zeros((0, 2), tf.int64)
    ours = sampled_softmax_loss(
        users, labels, items, bias, num_sampled=3, sampled_values=draw, seen=nothing
    )
    theirs = sampled_softmax_loss(users, labels, items, bias, num_sampled=3, sampled_values=draw)
    assert ours.numpy() == pytest.approx(theirs.numpy(), rel=1e-5)


def test_a_seen_negative_is_left_out_of_the_sampled_softmax_by_hand():
    users, items, bias, labels = _case()
    draw = (tf.constant([1, 3], tf.int64), tf.ones((4, 1)), tf.ones(2))  # log Q = 0
    got = sampled_softmax_loss(
        users, labels, items, bias, num_sampled=2, sampled_values=draw, seen=SEEN
    ).numpy()
    logits = users.numpy() @ items.numpy().T + bias.numpy()
    # example 0 (label 0) saw 1: only 3 competes; example 1 (label 5) saw 3: only 1 competes.
    competitors = [[3], [1], [1, 3], [1, 3]]
    expected = np.mean(
        [
            np.log(np.exp(row[[lab, *comp]]).sum()) - row[lab]
            for row, lab, comp in zip(logits, labels.numpy(), competitors, strict=True)
        ]
    )
    assert got == pytest.approx(expected, rel=1e-5)


def _as_mask(pairs, shape=(4, 6)):
    mask = np.zeros(shape, bool)
    mask[pairs.numpy()[:, 0], pairs.numpy()[:, 1]] = True
    return tf.constant(mask)


def test_a_seen_mask_leaves_out_what_the_pairs_leave_out_of_the_full_softmax():
    # towers.seen gives a batch's seen items as a (batch, num_items) mask; the label stays in.
    users, items, bias, labels = _case()
    expected = _full_by_hand(users, items, bias, labels, [{1}, {3}, set(), set()])
    got = full_softmax_loss(users, labels, items, bias, _as_mask(SEEN)).numpy()
    assert got == pytest.approx(expected, rel=1e-5)
    pairs = full_softmax_loss(users, labels, items, bias, SEEN).numpy()
    assert got == pytest.approx(pairs, rel=1e-6)


def test_a_seen_mask_leaves_out_what_the_pairs_leave_out_of_the_sampled_softmax():
    users, items, bias, labels = _case()
    draw = (tf.constant([0, 1, 3], tf.int64), tf.ones((4, 1)), tf.ones(3))  # log Q = 0
    got = [
        sampled_softmax_loss(
            users, labels, items, bias, num_sampled=3, sampled_values=draw, seen=seen
        ).numpy()
        for seen in (SEEN, _as_mask(SEEN))
    ]
    # Example 0 (label 0) saw 1, and 0 is its own label: only 3 competes.
    logits = users.numpy() @ items.numpy().T + bias.numpy()
    competitors = [[3], [0, 1], [0, 1, 3], [0, 1, 3]]
    expected = np.mean(
        [
            np.log(np.exp(logits[e, [lab, *competitors[e]]]).sum()) - logits[e, lab]
            for e, lab in enumerate(labels.numpy())
        ]
    )
    assert got[0] == pytest.approx(expected, rel=1e-5)
    assert got[1] == pytest.approx(got[0], rel=1e-6)
