import json
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from export.candidates import export_candidates
from serving.api import Recommender
from tests.conftest import child_survives_its_parent


@pytest.fixture(scope="module")
def rec(planted_artefact):
    return Recommender.load(planted_artefact)


def _read(directory):
    frame = pd.read_parquet(sorted(directory.glob("part-*.parquet")))
    return frame.sort_values(["user_id", "rank"]).reset_index(drop=True)


def test_every_user_equals_the_python_api(planted_artefact, rec, tmp_path):
    summary = export_candidates(planted_artefact, tmp_path / "out", k=4, shard_size=30)
    assert (summary.users, summary.shards, summary.shards_written) == (80, 3, 3)
    frame = _read(tmp_path / "out")
    assert list(frame.columns) == ["user_id", "rank", "item_id", "score", "model_version"]
    assert len(frame) == 80 * 4 and set(frame["model_version"]) == {rec.version}
    for user, rows in frame.groupby("user_id"):
        api = rec.recommend(user, k=4)
        assert rows["item_id"].tolist() == api.item_ids
        assert rows["rank"].tolist() == [1, 2, 3, 4]
        assert rows["score"].tolist() == pytest.approx([r.score for r in api], abs=1e-5)
    done = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert done["users"] == 80


def test_an_interrupted_export_resumes_without_redoing_finished_shards(planted_artefact, tmp_path):
    out = tmp_path / "out"
    export_candidates(planted_artefact, out, k=3, shard_size=20)
    complete = _read(out)
    # Simulate a crash: shard 2 never renamed into place, a temporary file left behind.
    (out / "part-00002.parquet").rename(out / "_tmp-999-part-00002.parquet")
    (out / "_SUCCESS").unlink()
    assert len(pd.read_parquet(out)) == 3 * 20 * 3  # readers skip the unfinished shard
    summary = export_candidates(planted_artefact, out, k=3, shard_size=20)
    assert (summary.shards_skipped, summary.shards_written) == (3, 1)
    pd.testing.assert_frame_equal(_read(out), complete)
    assert not list(out.glob("_tmp-*"))


def test_part_files_without_a_manifest_are_not_taken_for_finished_shards(
    planted_artefact, tmp_path
):
    (tmp_path / "part-00000.parquet").write_text("junk")
    with pytest.raises(ValueError, match="part-00000.parquet but no _manifest.json"):
        export_candidates(planted_artefact, tmp_path, k=3)
    assert not (tmp_path / "_manifest.json").exists() and not (tmp_path / "_SUCCESS").exists()


def test_a_user_table_with_a_null_user_id_is_refused_by_row(planted_artefact, tmp_path):
    table = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user_id": ["u1", None], "history": [["A"], ["B"]]}), table)
    with pytest.raises(
        ValueError, match=r"users.parquet: .*1 null user_id\(s\), the first in row 1"
    ):
        export_candidates(planted_artefact, tmp_path / "out", k=3, user_table=table)


def test_other_settings_are_refused_in_the_same_directory(planted_artefact, tmp_path):
    export_candidates(planted_artefact, tmp_path, k=3, shard_size=50)
    with pytest.raises(ValueError, match="other settings \\(\\['k'\\] differ\\)"):
        export_candidates(planted_artefact, tmp_path, k=5, shard_size=50)


def test_a_user_list_with_unknown_users_and_csv(planted_artefact, rec, tmp_path):
    summary = export_candidates(
        planted_artefact, tmp_path, k=2, users=["u3", "ghost", "u3"], fmt="csv"
    )
    assert (summary.users, summary.unknown_users) == (2, 1)
    frame = pacsv.read_csv(
        tmp_path / "part-00000.csv",
        convert_options=pacsv.ConvertOptions(
            column_types={"user_id": "string", "item_id": "string"}
        ),
    ).to_pandas()
    assert frame["user_id"].tolist() == ["u3", "u3", "ghost", "ghost"]
    assert frame["item_id"].tolist()[2:] == rec.recommend("ghost", k=2).item_ids


def test_parallel_workers_write_the_same_rows(planted_artefact, tmp_path):
    export_candidates(planted_artefact, tmp_path / "one", k=3, shard_size=20)
    summary = export_candidates(planted_artefact, tmp_path / "two", k=3, shard_size=20, workers=2)
    assert summary.shards_written == 4
    pd.testing.assert_frame_equal(_read(tmp_path / "two"), _read(tmp_path / "one"))


def test_a_worker_that_cannot_load_the_model_names_it(planted_artefact, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(planted_artefact, broken)
    (broken / "serving.npz").unlink()  # the query tower's arrays, and the weights they
    shutil.rmtree(broken / "weights")  # would otherwise be rebuilt from
    with pytest.raises(OSError, match=r"a worker process could not load the model: .*broken"):
        export_candidates(broken, tmp_path / "out", k=3, shard_size=20, workers=2)


def test_a_worker_ends_when_its_exporter_is_killed(tmp_path):
    # The exporter (a child of this test) starts a worker as its pool does, then is killed.
    worker = (
        "import os, time; from export.candidates import _init_worker; "
        "_init_worker('no-artefact', 'no-table', 1); print('watching', flush=True); "
        "time.sleep(60)"
    )
    exporter = (
        "import subprocess, sys; "
        f"w = subprocess.Popen([sys.executable, '-c', {worker!r}], stdout=subprocess.PIPE, "
        "text=True); w.stdout.readline(); print(w.pid, flush=True); input()"
    )
    assert not child_survives_its_parent(exporter)


def test_bad_arguments_are_named(planted_artefact, tmp_path):
    with pytest.raises(ValueError, match="fmt must be one of"):
        export_candidates(planted_artefact, tmp_path, fmt="xlsx")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        export_candidates(planted_artefact, tmp_path, k=0)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        export_candidates(planted_artefact, tmp_path, workers=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        export_candidates(planted_artefact, tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="users is empty"):
        export_candidates(planted_artefact, tmp_path, users=[])
    with pytest.raises(ValueError, match="users must be a list of user IDs, not one string"):
        export_candidates(planted_artefact, tmp_path, users="u12")
    with pytest.raises(FileNotFoundError, match="user table"):
        export_candidates(planted_artefact, tmp_path, user_table=tmp_path / "none.parquet")


def test_the_manifest_is_written_whole_and_a_damaged_one_is_named(planted_artefact, tmp_path):
    out = tmp_path / "out"
    export_candidates(planted_artefact, out, k=2, users=["u1", "u2"])
    # write_atomic leaves no temporary file beside the manifest
    assert sorted(p.name for p in out.iterdir()) == [
        "_SUCCESS", "_manifest.json", "part-00000.parquet"
    ]  # fmt: skip
    assert json.loads((out / "_manifest.json").read_text())["users"] == 2
    (out / "_manifest.json").write_text('{"model_version": ')  # a torn write
    with pytest.raises(ValueError, match=r"manifest .*_manifest.json is not valid JSON") as info:
        export_candidates(planted_artefact, out, k=2, users=["u1", "u2"])
    assert f"delete {out}" in str(info.value) and "another output directory" in str(info.value)
    (out / "_manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"_manifest.json is not a JSON object"):
        export_candidates(planted_artefact, out, k=2, users=["u1", "u2"])


def test_a_history_column_of_plain_strings_is_refused(planted_artefact, tmp_path):
    # "A|B" would otherwise be read as the items "A", "|", "B"
    table = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user_id": ["u1"], "history": ["A|B"]}), table)
    with pytest.raises(ValueError, match=r"users.parquet: .*'history' must be a list .*got string"):
        export_candidates(planted_artefact, tmp_path / "out", user_table=table)
    pq.write_table(pa.table({"user_id": ["u1"], "history": [[1.5]]}), table)
    with pytest.raises(ValueError, match=r"must hold string item IDs, got list<element: double>"):
        export_candidates(planted_artefact, tmp_path / "out", user_table=table)
    # a list of strings is what the exporter reads
    pq.write_table(pa.table({"user_id": ["u1"], "history": [["A", "B"]]}), table)
    summary = export_candidates(planted_artefact, tmp_path / "out", k=2, user_table=table)
    assert summary.users == 1
    assert not {"A", "B"} & set(pd.read_parquet(tmp_path / "out")["item_id"])  # seen: excluded
