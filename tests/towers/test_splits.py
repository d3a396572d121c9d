import numpy as np
import pandas as pd
import pytest

from towers.splits import make_split, ml100k_fold, per_user_tail, random_80_20


def _log(n_per_user: dict[str, int], reverse: bool = False) -> pd.DataFrame:
    """User u watches items 0..n-1 in order (or in reverse order)."""
    rows = [
        (u, str(i), 1.0, 100 + (n - i if reverse else i))
        for u, n in n_per_user.items()
        for i in range(n)
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


def test_temporal_user_20_uses_integer_ceil():
    # n = 15 -> 3 test items ((15 + 4) // 5); math.ceil(0.2 * 15) would give 4.
    # v watches in reverse, so u's last items are in v's train and are not dropped as cold.
    frame = pd.concat([_log({"u": 15}), _log({"v": 15}, reverse=True)])
    split = per_user_tail(frame, "temporal-user-20")
    assert split.test.groupby("user_id").size().to_dict() == {"u": 3, "v": 3}
    assert split.test[split.test.user_id == "u"]["item_id"].tolist() == ["12", "13", "14"]


def test_ties_in_time_break_by_numeric_item_id():
    frame = pd.DataFrame(
        {
            "user_id": ["u"] * 5,
            "item_id": ["10", "9", "2", "1", "3"],
            "rating": 1.0,
            "timestamp": [5, 5, 5, 1, 1],
        }
    )
    other = frame.assign(user_id="w", timestamp=[1, 2, 3, 4, 5])  # w ends on item 3
    split = per_user_tail(pd.concat([frame, other]), "leave-last-one")
    assert split.test["item_id"].tolist() == ["10", "3"]


def test_cold_test_items_are_dropped_and_counted():
    frame = pd.DataFrame(
        {
            "user_id": ["u", "u", "v"],
            "item_id": ["a", "b", "a"],
            "rating": 1.0,
            "timestamp": [1, 2, 1],
        }
    )
    split = per_user_tail(frame, "leave-last-one")
    # u's test item b never occurs in train; v's only item goes to test and a is in u's train
    assert split.cold_test_dropped == 1
    assert split.test["item_id"].tolist() == ["a"]


def test_splits_are_deterministic():
    frame = _log({"u": 30, "v": 7, "w": 12})
    for protocol in ("temporal-user-20", "leave-last-one", "random-80-20"):
        a, b = make_split(frame, protocol), make_split(frame.copy(), protocol)
        pd.testing.assert_frame_equal(a.train, b.train)
        pd.testing.assert_frame_equal(a.test, b.test)


def test_random_80_20_is_the_numpy_permutation():
    frame = _log({"u": 10})
    split = random_80_20(frame)
    order = np.random.default_rng(42).permutation(10)
    assert split.train["item_id"].tolist() == [str(i) for i in order[:8]]
    assert len(split.test) == 2


def test_unknown_protocol_is_named():
    with pytest.raises(ValueError, match="protocol must be one of"):
        make_split(_log({"u": 3}), "time-travel")


def test_ml100k_fold_matches_the_files(data_dir):
    split = ml100k_fold(data_dir / "ml-100k", 1)
    assert (len(split.train), len(split.test)) == (80_000, 20_000)
    with pytest.raises(ValueError, match="fold must be 1..5"):
        ml100k_fold(data_dir / "ml-100k", 6)


def test_tfrs_split_sizes(data_dir):
    from towers.movielens import load_movielens

    split = make_split(load_movielens("ml-100k", data_dir).interactions, "tfrs-80-20")
    assert (len(split.train), len(split.test)) == (80_000, 20_000)
