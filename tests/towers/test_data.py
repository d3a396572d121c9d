import hashlib
import http.client
import io
import logging
import zipfile

import numpy as np
import pandas as pd
import pytest

from towers import movielens
from towers.data import DataError, load_interactions, year_from_title
from towers.movielens import ARCHIVES, load_movielens, read_100k_ratings


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
    with pytest.raises(DataError, match=r"column 'rating' has non-numeric.*data row 2\b.*great"):
        load_interactions(path)


def test_unparseable_timestamp_names_column_and_row(tmp_path):
    path = _write(tmp_path, "user,item,rating,timestamp\n1,2,4,yesterday\n")
    with pytest.raises(DataError, match=r"column 'timestamp'.*data row 1\b.*yesterday"):
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


def test_null_ids_in_parquet_are_refused(tmp_path):
    path = tmp_path / "log.parquet"
    pd.DataFrame(
        {
            "user": ["1", None, "3"],
            "item": ["a", "b", "c"],
            "rating": [1.0] * 3,
            "timestamp": [1, 2, 3],
        }
    ).to_parquet(path)
    with pytest.raises(DataError, match=r"column 'user' has empty user IDs.*data row 2\b"):
        load_interactions(path)


def test_null_ids_in_metadata_are_refused(tmp_path):
    log = _write(tmp_path, "user,item,rating,timestamp\n1,a,4,5\n")
    items = tmp_path / "items.parquet"
    pd.DataFrame({"item_id": ["a", None], "title": ["A", "B"]}).to_parquet(items)
    with pytest.raises(DataError, match=r"items.parquet: column 'item_id'.*data row 2\b"):
        load_interactions(log, items_path=items)
    users = tmp_path / "users.parquet"
    pd.DataFrame({"user_id": [np.nan, 1.0], "age": [20, 30]}).to_parquet(users)
    with pytest.raises(DataError, match=r"users.parquet: column 'user_id'.*data row 1\b"):
        load_interactions(log, users_path=users)


def test_integer_valued_float_ids_match_integer_ids(tmp_path):
    path = tmp_path / "log.parquet"
    frame = {"user": [1.0, 2.5], "item": [10.0, 20.0], "rating": [1.0, 2.0], "timestamp": [1, 2]}
    pd.DataFrame(frame).to_parquet(path)
    items = tmp_path / "items.parquet"
    pd.DataFrame({"item_id": [10, 20], "title": ["Ten (1990)", "Twenty"]}).to_parquet(items)
    users = tmp_path / "users.parquet"
    pd.DataFrame({"user_id": [1.0, 2.5], "age": [20.0, 30.0]}).to_parquet(users)
    data = load_interactions(path, items_path=items, users_path=users)
    assert data.interactions["user_id"].tolist() == ["1", "2.5"]  # 2.5 is not an integer
    assert data.interactions["item_id"].tolist() == ["10", "20"]
    assert data.items["item_id"].tolist() == ["10", "20"]
    assert data.users["user_id"].tolist() == ["1", "2.5"]


def test_null_datetime_timestamp_is_refused(tmp_path):
    path = tmp_path / "log.parquet"
    times = pd.to_datetime(["2020-01-01", None])
    pd.DataFrame({"user": ["1", "2"], "item": ["a", "b"], "timestamp": times}).to_parquet(path)
    with pytest.raises(DataError, match=r"column 'timestamp' has missing timestamps.*data row 2\b"):
        load_interactions(path)


def test_infinite_timestamp_or_rating_is_refused(tmp_path):
    path = _write(tmp_path, "user,item,rating,timestamp\n1,a,3,5\n2,b,4,inf\n")
    with pytest.raises(DataError, match=r"column 'timestamp' has infinite.*data row 2\b"):
        load_interactions(path)
    path = _write(tmp_path, "user,item,rating,timestamp\n1,a,-inf,5\n", "r.csv")
    with pytest.raises(DataError, match=r"column 'rating' has non-numeric or non-finite.*row 1\b"):
        load_interactions(path)


def test_bad_row_is_numbered_among_data_rows(tmp_path):
    # blank lines are skipped and not counted: "bad" is the second data row
    path = _write(tmp_path, "user,item,rating,timestamp\n\n\n1,a,3,1\n\n2,b,bad,2\n")
    with pytest.raises(DataError, match=r"data row 2 \(counting from 1.*'bad'"):
        load_interactions(path)
    # a Parquet file with a non-default (string) index
    pq = tmp_path / "log.parquet"
    pd.DataFrame(
        {"user": ["1", "2"], "item": ["a", "b"], "rating": ["1", "x"], "timestamp": [1, 2]},
        index=["r1", "r2"],
    ).to_parquet(pq)
    with pytest.raises(DataError, match=r"column 'rating'.*data row 2\b"):
        load_interactions(pq)


def test_ragged_csv_is_a_data_error(tmp_path):
    first_long = _write(tmp_path, "user,item,rating,timestamp\n1,a,3,1,extra\n2,b,3,2\n")
    with pytest.raises(DataError, match=r"log.csv: cannot be read as a table: a row has more"):
        load_interactions(first_long)
    later_long = _write(tmp_path, "user,item,rating,timestamp\n1,a,3,1\n2,b,3,2,9\n", "l.csv")
    with pytest.raises(DataError, match=r"l.csv: cannot be read as a table"):
        load_interactions(later_long)
    short = _write(tmp_path, "user,item,rating,timestamp\n1,a,3,1\n2,b\n", "s.csv")
    with pytest.raises(DataError, match=r"s.csv: column 'rating'.*data row 2\b"):
        load_interactions(short)


def test_null_title_falls_back_to_the_item_id(tmp_path):
    log = _write(tmp_path, "user,item,rating,timestamp\n1,a,4,5\n1,b,4,6\n")
    items = tmp_path / "items.parquet"
    pd.DataFrame({"item_id": ["a", "b"], "title": [None, "Bee (1999)"]}).to_parquet(items)
    data = load_interactions(log, items_path=items)
    assert data.items["title"].tolist() == ["a", "Bee (1999)"]
    assert np.isnan(data.items["year"].iloc[0]) and data.items["year"].iloc[1] == 1999
    assert np.isnan(year_from_title(None)) and np.isnan(year_from_title(float("nan")))


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _fake_archive(monkeypatch, files):
    """Serve a zip of ``files`` as ml-100k and make it the official archive (no network)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(f"ml-100k/{name}", text)
    payload = buf.getvalue()
    monkeypatch.setitem(movielens.ARCHIVES, "ml-100k", hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(
        movielens.urllib.request, "urlopen", lambda url, timeout: _Response(payload)
    )


_ML100K = {
    "u.data": "1\t1\t5\t881250949\n",
    "u.item": "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n",
    "u.user": "1|24|M|technician|85711\n",
}


def test_interrupted_unpack_leaves_no_dataset_folder(tmp_path, monkeypatch):
    _fake_archive(monkeypatch, _ML100K)
    real_extract = zipfile.ZipFile.extract

    def crash_after_first(self, member, path=None, pwd=None):
        if str(member).endswith("u.item"):
            raise KeyboardInterrupt("killed while unpacking")
        return real_extract(self, member, path, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "extract", crash_after_first)
    monkeypatch.setattr(
        zipfile.ZipFile,
        "extractall",
        lambda self, path=None: [self.extract(m, path) for m in self.namelist()],
    )
    with pytest.raises(KeyboardInterrupt):
        load_movielens("ml-100k", tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial ml-100k/, no temporary folder
    monkeypatch.undo()
    _fake_archive(monkeypatch, _ML100K)
    data = load_movielens("ml-100k", tmp_path)  # the next run downloads again
    assert len(data.interactions) == 1 and data.users["user_id"].tolist() == ["1"]
    assert [p.name for p in tmp_path.iterdir()] == ["ml-100k"]


def test_existing_folder_without_download_is_accepted(tmp_path, monkeypatch):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    for name, text in _ML100K.items():
        (folder / name).write_text(text)
    monkeypatch.setattr(movielens, "download", lambda *a, **k: pytest.fail("must not download"))
    assert len(load_movielens("ml-100k", tmp_path).interactions) == 1


def test_connection_dropped_mid_download_is_a_data_error(tmp_path, monkeypatch):
    class Dropped(_Response):
        def read(self, *args):
            raise http.client.IncompleteRead(b"PK", 1000)

    monkeypatch.setattr(movielens.urllib.request, "urlopen", lambda url, timeout: Dropped())
    with pytest.raises(DataError, match=r"https://.*ml-100k.zip: download failed.*IncompleteRead"):
        load_movielens("ml-100k", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_movielens_empty_timestamp_names_file_column_and_row(tmp_path):
    small = tmp_path / "ml-latest-small"
    small.mkdir()
    (small / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,\n"
    )
    (small / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Animation\n")
    with pytest.raises(DataError, match=r"ratings.csv: column 'timestamp'.*data row 2\b"):
        load_movielens("ml-latest-small", tmp_path, allow_download=False)
    path = _write(tmp_path, "1\t1\t5\t881250949\n2\t1\tinf\t881250950\n", "u1.base")
    with pytest.raises(DataError, match=r"u1.base: column 'rating'.*data row 2\b"):
        read_100k_ratings(path)


def test_only_epoch_seconds_or_iso_timestamps(tmp_path):
    # "now" would be another time on every read of the same file; 01/02/2020 is ambiguous.
    for value in ("now", "today", "01/02/2020", "March 5 2020"):
        path = _write(tmp_path, f"user,item,rating,timestamp\n1,2,4,{value}\n")
        with pytest.raises(DataError, match=f"neither epoch seconds nor ISO.*{value}"):
            load_interactions(path)
    path = _write(tmp_path, "user,item,timestamp\n1,2,2020-01-02\n1,3,2020-01-02 00:00:05+00:00\n")
    assert load_interactions(path).interactions["timestamp"].tolist() == [1577923200, 1577923205]


def test_metadata_numbers_are_checked_and_blank_titles_fall_back(tmp_path):
    log = _write(tmp_path, "user,item,rating,timestamp\n1,a,4,5\n1,b,4,6\n")
    items = _write(tmp_path, "item_id,title,year\na, ,\nb,Bee,nineteen-ninety\n", "items.csv")
    with pytest.raises(DataError, match=r"items.csv: column 'year'.*data row 2\b.*nineteen"):
        load_interactions(log, items_path=items)
    items = _write(tmp_path, "item_id,title,year\na, ,\nb,Bee,1990\n", "items.csv")
    data = load_interactions(log, items_path=items)
    assert data.items["title"].tolist() == ["a", "Bee"] and np.isnan(data.items["year"].iloc[0])
    for age in ("twenty", "-40", "131"):
        users = _write(tmp_path, f"user_id,age\n1,{age}\n", "users.csv")
        with pytest.raises(DataError, match=r"users.csv: column 'age'.*in \[0, 130\].*data row 1"):
            load_interactions(log, users_path=users)


def _small_folder(tmp_path, movies, tags=None):
    small = tmp_path / "ml-latest-small"
    small.mkdir(exist_ok=True)
    (small / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    (small / "movies.csv").write_text(movies)
    if tags is not None:
        (small / "tags.csv").write_text(tags)


def test_movielens_metadata_files_are_validated(tmp_path):
    cases = [
        ("movieId,title\n1,Toy Story (1995)\n", None, r"movies.csv: missing genres"),
        ("", None, r"movies.csv: file is empty"),
        ("movieId,title,genres\n,Toy Story (1995),Animation\n", None,
         r"movies.csv: column 'movieId' has empty item IDs.*data row 1"),
        ("movieId,title,genres\n1,Toy Story (1995),Animation\n", "userId,movieId\n1,1\n",
         r"tags.csv: missing tag"),
    ]  # fmt: skip
    for movies, tags, message in cases:
        _small_folder(tmp_path, movies, tags)
        if tags is None and (tmp_path / "ml-latest-small" / "tags.csv").exists():
            (tmp_path / "ml-latest-small" / "tags.csv").unlink()
        with pytest.raises(DataError, match=message):
            load_movielens("ml-latest-small", tmp_path, allow_download=False)
    _small_folder(tmp_path, "movieId,title,genres\n1, ,Animation\n", "userId,movieId,tag\n1,1,\n")
    items = load_movielens("ml-latest-small", tmp_path, allow_download=False).items
    assert items["title"].tolist() == ["1"] and items["tags"].tolist() == [[]]


def test_movielens_100k_metadata_files_are_validated(tmp_path):
    folder = tmp_path / "ml-100k"
    good_item = _ML100K["u.item"]
    cases = [
        ({"u.item": "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0\n"}, r"u.item: the 19 genre"),
        ({"u.item": good_item.replace("|0|0|0|1|1", "|0||0|1|1")}, r"u.item: the 19 genre"),
        ({"u.user": "1|twenty|M|technician|85711\n"}, r"u.user: column 'age \(field 2\)'.*twenty"),
        ({"u.user": ""}, r"u.user: file is empty"),
        ({"u.item": "|Toy Story (1995)|01-Jan-1995||http://x" + "|0" * 19 + "\n"},
         r"u.item: column 'item_id \(field 1\)' has empty item IDs"),
    ]  # fmt: skip
    for change, message in cases:
        folder.mkdir(exist_ok=True)
        for name, text in {**_ML100K, **change}.items():
            (folder / name).write_text(text, encoding="latin-1")
        with pytest.raises(DataError, match=message):
            load_movielens("ml-100k", tmp_path, allow_download=False)
