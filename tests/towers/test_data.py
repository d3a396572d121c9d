import logging

import numpy as np
import pandas as pd
import pytest

from towers.data import DataError, load_interactions
from towers.movielens import ARCHIVES, load_movielens


def _write(tmp_path, text, name="log.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_csv_with_iso_timestamps_and_metadata(tmp_path):
    log = _write(tmp_path, "user,item,rating,timestamp\n1,10,4,2020-01-01T00:00:10Z\n1,11,3.5,20\n")
    items = _write(tmp_path, "item_id,title,genres\n10,Heat (1995),Action|Crime\n", "items.csv")
    data = load_interactions(log, items_path=items)
    assert data.interactions["timestamp"].tolist() == [1577836810, 20]
    assert data.interactions["rating"].tolist() == [4.0, 3.5]
    row = data.items.set_index("item_id").loc["10"]
    assert row["year"] == 1995 and row["genres"] == ["Action", "Crime"]
    assert len(data.checksum) == 64


def test_parquet_and_renamed_columns_and_no_rating(tmp_path):
    path = tmp_path / "log.parquet"
    pd.DataFrame({"who": ["a", "b"], "what": ["x", "y"], "when": [1, 2]}).to_parquet(path)
    data = load_interactions(path, user_col="who", item_col="what", timestamp_col="when")
    assert data.interactions["user_id"].tolist() == ["a", "b"]
    assert np.isnan(data.interactions["rating"]).all()


def test_missing_file_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_interactions(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="empty.csv: file is empty"):
        load_interactions(_write(tmp_path, "", "empty.csv"))
    with pytest.raises(DataError, match="header but no rows"):
        load_interactions(_write(tmp_path, "user,item,rating,timestamp\n"))


def test_missing_column_is_named(tmp_path):
    path = _write(tmp_path, "user,item,rating\n1,2,3\n")
    with pytest.raises(DataError, match=r"missing timestamp \(column 'timestamp'\)"):
        load_interactions(path)


def test_non_numeric_rating_names_column_and_row(tmp_path):
    path = _write(tmp_path, "user,item,rating,timestamp\n1,2,4,5\n1,3,great,6\n")
    with pytest.raises(DataError, match=r"column 'rating' has non-numeric.*line 3.*great"):
        load_interactions(path)


def test_unparseable_timestamp_names_column_and_row(tmp_path):
    path = _write(tmp_path, "user,item,rating,timestamp\n1,2,4,yesterday\n")
    with pytest.raises(DataError, match=r"column 'timestamp'.*line 2.*yesterday"):
        load_interactions(path)


def test_empty_ids_are_refused(tmp_path):
    path = _write(tmp_path, "user,item,rating,timestamp\n1,,4,5\n")
    with pytest.raises(DataError, match="column 'item' has empty item IDs"):
        load_interactions(path)


def test_duplicates_keep_the_last_row_and_are_counted(tmp_path, caplog):
    path = _write(tmp_path, "user,item,rating,timestamp\n1,2,4,5\n1,2,2,5\n1,2,3,9\n")
    with caplog.at_level(logging.WARNING):
        data = load_interactions(path)
    assert "dropped 1 duplicate" in caplog.text
    # the (1, 2, 5) repeat keeps its last rating; the re-watch at t=9 stays
    assert data.interactions[["rating", "timestamp"]].values.tolist() == [[2.0, 5], [3.0, 9]]


def test_movielens_small(data_dir):
    data = load_movielens("ml-latest-small", data_dir, allow_download=False)
    assert len(data.interactions) == 100_836 and data.num_users == 610
    toy = data.items.set_index("item_id").loc["1"]
    assert toy["year"] == 1995 and "Animation" in toy["genres"] and "pixar" in toy["tags"]
    assert data.users is None


def test_movielens_100k_has_demographics(data_dir):
    data = load_movielens("ml-100k", data_dir, allow_download=False)
    assert len(data.interactions) == 100_000 and data.num_items == 1682
    user1 = data.users.set_index("user_id").loc["1"]
    assert (user1["age"], user1["gender"], user1["occupation"], user1["zip_prefix"]) == (
        24.0,
        "M",
        "technician",
        "8",
    )
    assert data.items.set_index("item_id").loc["1"]["genres"] == [
        "Animation",
        "Children's",
        "Comedy",
    ]


def test_unknown_dataset_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="name must be one of"):
        load_movielens("ml-1b", tmp_path)
    with pytest.raises(DataError, match="downloads are disabled"):
        load_movielens("ml-100k", tmp_path, allow_download=False)
    assert set(ARCHIVES) == {"ml-latest-small", "ml-100k"}


def test_download_refuses_a_wrong_checksum(tmp_path, monkeypatch):
    import io
    import zipfile

    from towers import movielens

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ml-100k/u.data", "1\t1\t5\t1\n")

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(
        movielens.urllib.request, "urlopen", lambda url, timeout: Response(buf.getvalue())
    )
    with pytest.raises(DataError, match="differs from the official"):
        movielens.download("ml-100k", tmp_path)
    assert not (tmp_path / "ml-100k").exists()
