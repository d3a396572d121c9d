import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.localfilesystem import LocalFileSystem

from export.beam import beam_export
from export.candidates import export_candidates
from serving.cli import main

# In this process, one worker: the test runs in seconds and sees the DoFn's errors directly.
IN_PROCESS = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]
KEYS = ["user_id", "rank", "item_id"]


class _RemoteFileSystem(LocalFileSystem):
    """``nwtest://<local path>``: a Beam filesystem that is not local, as gs:// is not."""

    @classmethod
    def scheme(cls):
        return "nwtest"

    @staticmethod
    def _local(path):
        return path.removeprefix("nwtest://")

    def exists(self, path):
        return super().exists(self._local(path))

    def metadata(self, path):
        return FileMetadata(path, super().metadata(self._local(path)).size_in_bytes)

    def _path_open(self, path, *args, **kwargs):
        return super()._path_open(self._local(path), *args, **kwargs)

    def _list(self, dir_or_prefix):
        for meta in super()._list(self._local(dir_or_prefix)):
            yield FileMetadata("nwtest://" + meta.path, meta.size_in_bytes)


def _read(directory):
    frame = pd.read_parquet(sorted(directory.glob("part-*.parquet")))
    return frame.sort_values(["user_id", "rank"], ignore_index=True)


@pytest.fixture(scope="module")
def users(planted_artefact, tmp_path_factory):
    """The artefact's 80 users, plus one with an empty history and one whose history the model
    does not know, as two Parquet shards."""
    table = pd.read_parquet(planted_artefact / "users.parquet")
    extra = pd.DataFrame(
        {"user_id": ["ghost", "stranger"], "history": [[], ["nope", "A"]], "age": np.nan,
         "gender": "", "occupation": "", "zip_prefix": ""}
    )  # fmt: skip
    table = pd.concat([table, extra], ignore_index=True)
    folder = tmp_path_factory.mktemp("users")
    table.iloc[:50].to_parquet(folder / "part-0.parquet", index=False)
    table.iloc[50:].to_parquet(folder / "part-1.parquet", index=False)
    table.to_parquet(folder / "all.parquet", index=False)
    return folder


def test_beam_rows_equal_the_single_process_exporter(planted_artefact, users, tmp_path):
    summary = beam_export(
        planted_artefact, users / "part-*.parquet", tmp_path / "beam", k=4, batch_size=16,
        pipeline_args=IN_PROCESS,
    )  # fmt: skip
    export_candidates(planted_artefact, tmp_path / "one", k=4, user_table=users / "all.parquet")
    beam, one = _read(tmp_path / "beam"), _read(tmp_path / "one")
    assert list(beam.columns) == ["user_id", "rank", "item_id", "score", "model_version"]
    assert len(beam) == 82 * 4
    pd.testing.assert_frame_equal(beam[KEYS], one[KEYS])
    np.testing.assert_allclose(beam["score"], one["score"], rtol=1e-5, atol=1e-5)
    assert set(beam["model_version"]) == {summary.model_version}
    # Seen items are excluded, also those the model does not know ("nope").
    assert "A" not in set(beam.loc[beam["user_id"] == "stranger", "item_id"])
    # A user with an empty history gets what the exporter gives a user it has never seen.
    new = export_candidates(planted_artefact, tmp_path / "new", k=4, users=["ghost"])
    assert new.unknown_users == 1
    assert beam.loc[beam["user_id"] == "ghost", "item_id"].tolist() == _read(
        tmp_path / "new"
    )["item_id"].tolist()  # fmt: skip
    manifest = json.loads((tmp_path / "beam" / "_manifest.json").read_text())
    assert manifest["engine"] == "beam" and manifest["runner"] == "DirectRunner"
    assert (manifest["users"], manifest["k"], manifest["model_version"]) == (
        82, 4, summary.model_version
    )  # fmt: skip
    assert manifest["users_per_second"] > 0 and summary.shards >= 1


def test_bad_input_is_named(planted_artefact, users, tmp_path):
    good = users / "all.parquet"
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        beam_export(planted_artefact, good, tmp_path / "o", k=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        beam_export(planted_artefact, good, tmp_path / "o", batch_size=0)
    with pytest.raises(FileNotFoundError, match="users '.*missing-\\*.parquet' matches no file"):
        beam_export(planted_artefact, users / "missing-*.parquet", tmp_path / "o")
    no_history = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"user_id": ["u1"]}), no_history)
    with pytest.raises(ValueError, match="ids.parquet lacks columns \\['history'\\]"):
        beam_export(planted_artefact, no_history, tmp_path / "o")
    text_history = tmp_path / "text.parquet"
    pq.write_table(pa.table({"user_id": ["u1"], "history": ["A|B"]}), text_history)
    with pytest.raises(ValueError, match="text.parquet: user table column 'history' must be"):
        beam_export(planted_artefact, text_history, tmp_path / "o")
    null_id = tmp_path / "null.parquet"
    pq.write_table(pa.table({"user_id": ["u1", None], "history": [["A"], ["B"]]}), null_id)
    with pytest.raises(ValueError, match="null.parquet has 1 null user_id"):
        beam_export(planted_artefact, null_id, tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="artefact .* is not a nextwatch artefact"):
        beam_export(tmp_path, good, tmp_path / "o")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "part-00000-of-00001.parquet").touch()
    with pytest.raises(ValueError, match="already holds part-\\* files"):
        beam_export(planted_artefact, good, tmp_path / "o")


def test_a_repeated_user_id_fails_the_run_and_keeps_no_part_files(
    planted_artefact, users, tmp_path
):
    table = pd.read_parquet(users / "all.parquet")
    folder = tmp_path / "users"
    folder.mkdir()
    table.iloc[:50].to_parquet(folder / "part-0.parquet", index=False)
    # "ghost" twice in one shard, and the first user again in the other shard
    pd.concat([table.iloc[50:], table.iloc[[0, -2]]]).to_parquet(folder / "part-1.parquet")
    assert table["user_id"].iloc[0] == "u0"
    with pytest.raises(ValueError, match=r"repeats user ids \(2 repeated, e.g. \['ghost', 'u0'\]"):
        beam_export(planted_artefact, folder / "part-*.parquet", tmp_path / "o", k=2,
                    batch_size=16, pipeline_args=IN_PROCESS)  # fmt: skip
    assert not list((tmp_path / "o").iterdir())  # no part files, manifest or check output
    # A clean table leaves no trace of the check in the output, nor does a run that stopped
    # before it finished (its temporary files would be read as output).
    stale = tmp_path / "ok" / "beam-temp-part-0123"
    stale.mkdir(parents=True)
    (stale / "cut-off.parquet").write_bytes(b"PAR1")
    beam_export(planted_artefact, users / "all.parquet", tmp_path / "ok", k=2,
                pipeline_args=IN_PROCESS)  # fmt: skip
    assert len(pd.read_parquet(tmp_path / "ok")) == 82 * 2
    assert sorted(
        p.name for p in (tmp_path / "ok").iterdir() if not p.name.startswith("part-")
    ) == ["_manifest.json"]


def test_command_line_beam_engine_with_a_remote_artefact(planted_artefact, tmp_path, capsys):
    art = f"nwtest://{planted_artefact}"  # copied to a local folder by each worker
    out = tmp_path / "cands"
    # Without --runner the defaults are two worker processes; these flags override them.
    assert main(["export-candidates", "--artefact", art, "--output", str(out), "--k", "2",
                 "--engine", "beam", "--", "--direct_running_mode=in_memory",
                 "--direct_num_workers=1"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["users"] == 80
    assert len(_read(out)) == 160
    assert main(["export-candidates", "--artefact", art, "--output", str(tmp_path / "x"),
                 "--engine", "beam", "--users", str(tmp_path / "ids.txt")]) == 2  # fmt: skip
    assert main(["export-candidates", "--output", str(tmp_path / "y"), "--",
                 "--runner=DirectRunner"]) == 2  # fmt: skip


def test_every_shard_is_checked_before_the_job(planted_artefact, users, tmp_path):
    table = pd.read_parquet(users / "all.parquet")
    for name, history in (("text", ["A|B"] * 2), ("ints", [[1, 2]] * 2)):
        folder = tmp_path / name
        folder.mkdir()
        table.iloc[:50].to_parquet(folder / "part-0.parquet", index=False)
        odd = table.iloc[50:52].assign(history=history)
        odd.to_parquet(folder / "part-1.parquet", index=False)
        message = "history' must be" if name == "text" else "users files disagree"
        with pytest.raises(ValueError, match=message):
            beam_export(planted_artefact, folder / "part-*.parquet", tmp_path / f"o-{name}",
                        pipeline_args=IN_PROCESS)  # fmt: skip
        assert not (tmp_path / f"o-{name}").exists()
