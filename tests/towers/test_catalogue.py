import numpy as np
import pyarrow as pa
import pytest

from towers.catalogue import UserTable, distinct_history, genre_names


def _table(history_type: pa.DataType, histories: list) -> UserTable:
    return UserTable(
        pa.table(
            {
                "user_id": pa.array(["u1", "u2", "u3"]),
                "history": pa.array(histories, type=pa.list_(history_type)),
            }
        )
    )


def test_histories_keep_each_repeated_item_at_its_last_position():
    table = _table(pa.string(), [["a", "b", "a", "c", "b"], [], ["x"]])
    # u1: "a" at 0 and 2, "b" at 1 and 4: kept at 2 and 4.
    assert table.histories(np.array([0, 1, 2, -1])) == [["a", "c", "b"], [], ["x"], []]
    assert table.histories(table.rows(["u3", "nobody", "u1"])) == [["x"], [], ["a", "c", "b"]]
    # One row (a request's user) is read on its own path: the same answers.
    assert [table.histories(np.array([r])) for r in (0, 1, 2, -1)] == [
        [["a", "c", "b"]], [[]], [["x"]], [[]]
    ]  # fmt: skip


def test_one_row_is_read_from_any_chunk_of_a_chunked_table():
    first = pa.table({"user_id": ["u1"], "history": pa.array([["a"]], pa.list_(pa.string()))})
    second = pa.table(
        {"user_id": ["u2"], "history": pa.array([["b", "c", "b"]], pa.list_(pa.string()))}
    )
    table = UserTable(pa.concat_tables([first, second]))
    assert table.histories(table.rows(["u2"])) == [["c", "b"]]
    assert table.histories(table.rows(["u1"])) == [["a"]]
    assert table.histories(table.rows(["u2", "u1"])) == [["c", "b"], ["a"]]


@pytest.mark.parametrize(
    ("history_type", "histories"),
    [
        (pa.int64(), [[1, 2, 1, 3, 2], [], [7]]),  # integer IDs read as their decimal strings
        (pa.large_string(), [["1", "2", "1", "3", "2"], [], ["7"]]),
        (pa.string(), [["1", "2", "1", "3", "2"], [], ["7"]]),
    ],
)
def test_every_history_type_folds_the_same(history_type, histories):
    table = _table(history_type, histories)
    assert table.histories(np.array([0, 1, 2])) == [["1", "3", "2"], [], ["7"]]


def test_a_null_entry_folds_as_distinct_history_does():
    table = _table(pa.string(), [["a", None, "a"], ["b"], []])
    assert table.histories(np.array([0])) == [distinct_history(["a", None, "a"])]


def test_genre_names_from_parquet_arrays_lists_and_tuples():
    as_read = np.array(["Comedy", "Drama"], dtype=object)  # what pandas gives for list<string>
    assert genre_names(as_read) == ("Comedy", "Drama")
    assert genre_names(["Comedy", "Drama"]) == ("Comedy", "Drama")
    assert genre_names(()) == ()
    assert genre_names(np.array([], dtype=object)) == ()
