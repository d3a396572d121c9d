"""A user's own files: what the loader refuses so that the live service can take what was
trained, and what it fills in."""

import pandas as pd
import pytest

from towers.catalogue import complete_catalogue
from towers.data import DataError, load_interactions


def _write(tmp_path, text, name="log.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_millisecond_timestamps_are_refused_naming_the_unit(tmp_path):
    path = _write(tmp_path, "user,item,timestamp\n1,2,1600000000\n1,3,1600000000000\n")
    with pytest.raises(DataError, match=r"'timestamp' has timestamps after the year 5138.*"
                                        r"not milliseconds.*data row 2\b"):  # fmt: skip
        load_interactions(path)
    ok = _write(tmp_path, "user,item,timestamp\n1,2,99999999999\n")  # year 5138, just inside
    assert load_interactions(ok).interactions["timestamp"].tolist() == [99_999_999_999]


def test_a_named_rating_column_must_exist(tmp_path):
    path = _write(tmp_path, "user,item,rating,timestamp\n1,2,4,5\n")
    with pytest.raises(DataError, match=r"missing rating \(column 'stars'\)"):
        load_interactions(path, rating_col="stars")
    assert load_interactions(path).interactions["rating"].tolist() == [4.0]  # found by default
    no_ratings = _write(tmp_path, "user,item,timestamp\n1,2,5\n", "watches.csv")
    assert load_interactions(no_ratings).interactions["rating"].isna().all()


@pytest.mark.parametrize(
    "bad", ["x" * 129, "Amélie\u00a0(2001)", "tab\there"], ids=["long", "nbsp", "tab"]
)
def test_ids_the_service_could_not_take_are_refused(tmp_path, bad):
    frame = pd.DataFrame({"user": ["u", "u"], "item": ["ok", bad], "timestamp": [1, 2]})
    path = tmp_path / "log.parquet"
    frame.to_parquet(path)
    with pytest.raises(DataError, match=r"column 'item' has item IDs that are not 1 to 128 "
                                        r"printable.*data row 2\b"):  # fmt: skip
        load_interactions(path)
    frame["item"] = ["ok", "x" * 128]  # 128 characters are fine
    frame.to_parquet(path)
    assert len(load_interactions(path).interactions) == 2


def test_watched_items_missing_from_the_metadata_file_are_titled_by_their_ids(tmp_path, caplog):
    log = _write(tmp_path, "user,item,timestamp\n1,10,1\n1,11,2\n2,12,3\n")
    items = _write(tmp_path, "item_id,title,genres\n10,Heat (1995),Action\n9,Unwatched,\n", "i.csv")
    data = load_interactions(log, items_path=items)
    rows = data.items.set_index("item_id")
    assert sorted(rows.index) == ["10", "11", "12", "9"]
    assert rows.loc["11", "title"] == "11" and rows.loc["11", "genres"] == []
    assert rows.loc["10", "title"] == "Heat (1995)"
    assert "no metadata for 2 watched item(s), e.g. '11'" in caplog.text


def test_an_old_catalogue_is_completed_with_the_index_items():
    items = pd.DataFrame({"item_id": ["A"], "title": ["Film A"], "genres": [("Drama",)]})
    full = complete_catalogue(items, ["A", "B"])
    assert full["item_id"].tolist() == ["A", "B"] and full["title"].tolist() == ["Film A", "B"]
    assert complete_catalogue(items, ["A"]) is items
    assert complete_catalogue(None, ["B"])["title"].tolist() == ["B"]


def test_parquet_user_metadata_codes_read_as_text(tmp_path):
    log = _write(tmp_path, "user,item,timestamp\n1,10,1\n2,11,2\n")
    users = tmp_path / "users.parquet"
    pd.DataFrame({"user_id": [1, 2], "zip_prefix": [1.0, None], "gender": ["F", None]}).to_parquet(
        users
    )
    rows = load_interactions(log, users_path=users).users.set_index("user_id")
    assert rows.loc["1", "zip_prefix"] == "1" and rows.loc["2", "zip_prefix"] == ""
    assert rows.loc["2", "gender"] == ""
