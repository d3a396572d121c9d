import numpy as np
import pandas as pd
import pytest

from ranking.impressions import rating_examples, simulate_impressions

# u1: a(t10, r5) b(t20, r4) c(t30, r2); u2: b(t5, r4) a(t15, r3)
LOG = pd.DataFrame(
    [("u1", "a", 5.0, 10), ("u1", "b", 4.0, 20), ("u1", "c", 2.0, 30),
     ("u2", "b", 4.0, 5), ("u2", "a", 3.0, 15)],
    columns=["user_id", "item_id", "rating", "timestamp"],
)  # fmt: skip


def fake_tower(histories, seen, times, user_ids):
    """Always ranks a > b > c > d (scores 4..1), minus what the user has seen."""
    out = []
    for s in seen:
        ids = [i for i in "abcd" if i not in s]
        out.append((ids, [float(4 - "abcd".index(i)) for i in ids]))
    return out


def _rows(ex):
    prev, popularity = ex.numeric["prev_impressions"], ex.numeric["item_popularity"]
    return [
        (ex.user_id[j], ex.item_id[j], ex.label[j], ex.weight[j], int(prev[j]), int(popularity[j]))
        for j in range(len(ex))
    ]


def test_impressions_on_a_tiny_log_are_exact():
    ex = simulate_impressions(
        LOG, fake_tower, num_candidates=4, max_history=3, events_per_user=None
    )
    assert _rows(ex) == [
        # u1 at t20 (history a): shown b, c, d; b watched with rating 4; b was rated once before
        ("u1", "b", 1.0, 4.0, 0, 1), ("u1", "c", 0.0, 1.0, 0, 0), ("u1", "d", 0.0, 1.0, 0, 0),
        # u1 at t30 (history a, b): c and d were shown once before
        ("u1", "c", 1.0, 2.0, 1, 0), ("u1", "d", 0.0, 1.0, 1, 0),
        # u2 at t15 (history b): a was rated once before (u1 at t10)
        ("u2", "a", 1.0, 3.0, 0, 1), ("u2", "c", 0.0, 1.0, 0, 0), ("u2", "d", 0.0, 1.0, 0, 0),
    ]  # fmt: skip
    assert ex.history[0].tolist() == ["", "", "a"] and ex.history[3].tolist() == ["", "a", "b"]
    np.testing.assert_array_equal(ex.history_rating[3], [np.nan, 5.0, 4.0])  # a's and b's
    assert ex.numeric["user_mean"][3] == pytest.approx(4.5)  # (5 + 4) / 2, not c's own 2
    assert ex.numeric["user_count"][3] == 2 and ex.numeric["time_since_last"][3] == 10
    np.testing.assert_array_equal(ex.numeric["tower_rank"][:3], [1, 2, 3])
    np.testing.assert_array_equal(ex.group, [0, 0, 0, 1, 1, 2, 2, 2])
    assert np.isnan(ex.rating[1]) and ex.rating[0] == 4.0  # positives carry their rating


def test_no_feature_sees_the_label_or_the_future():
    ex = simulate_impressions(
        LOG, fake_tower, num_candidates=4, max_history=3, events_per_user=None
    )
    for j in np.flatnonzero(ex.label == 1):
        assert ex.item_id[j] not in ex.history[j]
    # popularity counts strictly earlier events only: c at t30 is not counted for itself
    assert ex.numeric["item_popularity"][3] == 0


def test_a_watch_the_generator_did_not_show_makes_no_impression():
    def never_c(histories, seen, times, user_ids):
        return [([i for i in "abd" if i not in s], [3.0, 2.0, 1.0][: 3 - len(s & set("abd"))])
                for s in seen]  # fmt: skip

    ex = simulate_impressions(LOG, never_c, num_candidates=3, max_history=3, events_per_user=None)
    assert "c" not in set(ex.item_id[ex.label == 1])
    assert len(set(ex.group)) == 2


def test_rating_rows_leave_the_target_out():
    rows = rating_examples(LOG, max_history=3, context="all")
    j = 2  # u1's rating of c (2.0): the other ratings are a (5) and b (4)
    assert (rows.user_id[j], rows.item_id[j], rows.rating[j]) == ("u1", "c", 2.0)
    assert rows.history[j].tolist() == ["", "a", "b"]
    np.testing.assert_array_equal(rows.history_rating[j], [np.nan, 5.0, 4.0])
    assert rows.numeric["user_mean"][j] == pytest.approx(4.5)
    assert np.isnan(rows.label).all()
    before = rating_examples(LOG, max_history=3, context="before")
    assert before.history[0].tolist() == ["", "", ""] and np.isnan(before.numeric["user_mean"][0])
    assert before.history[2].tolist() == ["", "a", "b"]  # u1's c at t30
    np.testing.assert_array_equal(before.history_rating[2], [np.nan, 5.0, 4.0])
    test = pd.DataFrame({"user_id": ["u2"], "item_id": ["c"], "rating": [1.0]})
    target = rating_examples(LOG, test, max_history=3, context="all")
    assert target.history[0].tolist() == ["", "b", "a"]
    np.testing.assert_array_equal(target.history_rating[0], [np.nan, 4.0, 3.0])
    assert target.numeric["item_popularity"][0] == 1 and target.numeric["user_mean"][0] == 3.5
    with pytest.raises(ValueError, match="context must be"):
        rating_examples(LOG, context="later")


def test_an_item_rated_twice_leaves_both_ratings_out_of_its_rows():
    log = pd.DataFrame([("u1", "a", 5.0, 1), ("u1", "a", 5.0, 2), ("u1", "b", 1.0, 3)],
                       columns=["user_id", "item_id", "rating", "timestamp"])  # fmt: skip
    rows = rating_examples(log, max_history=3, context="all")
    for j in (0, 1):  # the two ratings of a: the user's other items are b alone
        assert rows.numeric["user_count"][j] == 1 and rows.numeric["user_mean"][j] == 1.0
        assert rows.numeric["item_popularity"][j] == 0  # nobody else rated a
    assert rows.numeric["user_mean"][2] == 5.0 and rows.numeric["item_popularity"][2] == 0


def test_subsampled_negatives_are_reweighted_to_keep_the_expected_loss():
    ex = simulate_impressions(
        LOG, fake_tower, num_candidates=4, max_history=3, events_per_user=None,
        negatives_per_impression=1,
    )  # fmt: skip
    for g in np.unique(ex.group):
        rows = np.flatnonzero(ex.group == g)
        negatives = rows[ex.label[rows] == 0]
        assert (ex.label[rows] == 1).sum() == 1 and len(negatives) == 1
    # u1 at t20 and u2 at t15 had 2 negatives each (weight 2); u1 at t30 had 1 (weight 1)
    assert ex.weight[ex.label == 0].tolist() == [2.0, 1.0, 2.0]
    assert ex.weight[ex.label == 1].tolist() == [4.0, 2.0, 3.0]


def test_a_label_horizon_makes_every_shown_later_watch_a_positive():
    ex = simulate_impressions(
        LOG, fake_tower, num_candidates=4, max_history=3, events_per_user=None, label_horizon=2
    )
    assert _rows(ex) == [
        # u1 at t20 (history a): b (next, rating 4) and c (the one after, rating 2) are positives
        ("u1", "b", 1.0, 4.0, 0, 1), ("u1", "c", 1.0, 2.0, 0, 0), ("u1", "d", 0.0, 1.0, 0, 0),
        # u1 at t30: only c is left in u1's log (u2's later events are not u1's)
        ("u1", "c", 1.0, 2.0, 1, 0), ("u1", "d", 0.0, 1.0, 1, 0),
        ("u2", "a", 1.0, 3.0, 0, 1), ("u2", "c", 0.0, 1.0, 0, 0), ("u2", "d", 0.0, 1.0, 0, 0),
    ]  # fmt: skip
    assert ex.rating[1] == 2.0  # a later positive carries its own rating
    # Features are still as of the impression: c's history at t20 is a alone.
    assert ex.history[1].tolist() == ["", "", "a"]
    with pytest.raises(ValueError, match="label_horizon"):
        simulate_impressions(LOG, fake_tower, label_horizon=0)


def test_a_watch_without_a_rating_is_left_out_of_means_and_weighs_as_the_mean_rating():
    # u1's b is a watch with no rating (as the service stores a "watch" event).
    log = LOG.assign(rating=[5.0, np.nan, 2.0, 4.0, 3.0])
    ex = simulate_impressions(
        log, fake_tower, num_candidates=4, max_history=3, events_per_user=None
    )
    assert ex.numeric["user_mean"][3] == 5.0  # u1 at t30: a's 5 alone, b has no rating
    assert ex.numeric["user_count"][3] == 2  # both events count as watches
    assert np.isnan(ex.rating[0]) and ex.weight[0] == pytest.approx((5 + 2 + 4 + 3) / 4)
    assert np.isfinite(ex.weight).all() and np.isfinite(ex.numeric["user_mean"][3:]).all()
    rows = rating_examples(log, max_history=3, context="all")
    assert rows.numeric["user_mean"][2] == 5.0  # u1's c: the other rated item is a alone
    before = rating_examples(log, max_history=3, context="before")
    assert before.numeric["user_mean"][2] == 5.0


def test_max_position_keeps_only_new_users_impressions_with_every_later_watch_a_positive():
    ex = simulate_impressions(
        LOG, fake_tower, num_candidates=4, max_history=3, events_per_user=None,
        label_horizon=10**6, max_position=1,
    )  # fmt: skip
    assert _rows(ex) == [
        # u1 at t20 (history a, one item): b and c, both later, are positives; t30 (two) is out
        ("u1", "b", 1.0, 4.0, 0, 1), ("u1", "c", 1.0, 2.0, 0, 0), ("u1", "d", 0.0, 1.0, 0, 0),
        # u2 at t15: a alone; u1's later events never become u2's labels
        ("u2", "a", 1.0, 3.0, 0, 1), ("u2", "c", 0.0, 1.0, 0, 0), ("u2", "d", 0.0, 1.0, 0, 0),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="max_position"):
        simulate_impressions(LOG, fake_tower, max_position=0)


def test_negative_ratings_are_refused_since_they_weigh_positives():
    thumbs = LOG.assign(rating=[1.0, -1.0, 1.0, 1.0, -1.0])
    with pytest.raises(ValueError, match="must be >= 0; the lowest is -1"):
        simulate_impressions(thumbs, fake_tower, num_candidates=4, max_history=3)
    unrated = LOG.assign(rating=np.nan)  # watches only: every positive weighs 1
    ex = simulate_impressions(unrated, fake_tower, num_candidates=4, max_history=3)
    assert (ex.weight[ex.label == 1] == 1.0).all()


def test_a_ranker_job_names_an_empty_log_and_a_fractional_sample(planted_artefact, tmp_path):
    from ranking.pipeline import train_ranker_job
    from tests.conftest import planted_dataset

    data = planted_dataset()
    with pytest.raises(ValueError, match="train has no interactions"):
        train_ranker_job(planted_artefact, data.with_interactions(data.interactions.iloc[:0]),
                         tmp_path / "r")  # fmt: skip
    for bad in (1.5, True):
        with pytest.raises(ValueError, match="events_per_user must be an int >= 1"):
            train_ranker_job(planted_artefact, data, tmp_path / "r", events_per_user=bad)
