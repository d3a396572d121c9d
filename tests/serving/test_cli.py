import json
from dataclasses import replace

import pandas as pd
import pytest

from serving.cli import build_parser, main
from serving.cli_args import retrain_options, tower_presets
from towers.data import DataError
from towers.presets import benchmark_config, benchmark_options, new_user_config

TINY = "--epochs 2 --batch-size 16 --output-dim 8 --embedding-dim 8 --token-dim 4 --verbose 0"


def _tiny_log(path):
    rows = []
    for u in range(30):
        seq = ["A", "B", "C", "D"] if u % 2 else ["C", "D", "A", "B"]
        rows += [(f"u{u}", item, 4.0, 100 * u + t) for t, item in enumerate(seq)]
    pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).to_csv(path, index=False)
    return path


def _run(command: str, log, out, extra: str = "") -> int:
    args = [command, "--interactions", str(log), *extra.split()]
    args += ["--output", str(out)] if command == "train-candidates" else ["--artefact", str(out)]
    return main(args)


def test_train_then_evaluate_from_a_users_own_file(tmp_path, capsys):
    log, out = _tiny_log(tmp_path / "log.csv"), tmp_path / "art"
    assert _run("train-candidates", log, out, f"--protocol leave-last-one {TINY}") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["protocol"] == "leave-last-one" and printed["examples"] == 90
    for name in ("config.json", "metrics.json", "item_vectors.npy", "vocab/items.txt"):
        assert (out / name).exists()
    config = json.loads((out / "config.json").read_text())
    assert len(config["data_checksum"]) == 64 and config["tower"]["output_dim"] == 8
    assert any((out / "logs").rglob("events.out.tfevents*"))  # TensorBoard curve
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluation"]["users"] == 30.0

    assert _run("evaluate", log, out, "--protocol leave-last-one") == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["recall@10"] == metrics["evaluation"]["recall@10"]


def test_evaluating_on_another_protocol_is_refused(tmp_path, caplog):
    log, out = _tiny_log(tmp_path / "log.csv"), tmp_path / "art"
    assert _run("train-candidates", log, out, TINY) == 0
    assert _run("evaluate", log, out, "--protocol leave-last-one") == 2
    assert "would test on training data" in caplog.text


def test_bad_input_file_is_a_clean_error(tmp_path, caplog):
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,rating\n1,2,3\n")
    assert _run("train-candidates", bad, tmp_path / "art") == 2
    assert "missing timestamp" in caplog.text


def test_cli_defaults_are_the_datasets_benchmark_preset():
    parser = build_parser()
    for argv, dataset in [
        ([], "ml-latest-small"),
        (["--dataset", "ml-100k"], "ml-100k"),
        (["--interactions", "log.csv"], None),
        (["--shards", "world"], None),
    ]:
        config, options = tower_presets(parser.parse_args(["train-candidates", *argv]))
        assert config == benchmark_config(dataset), argv
        assert replace(options, log_dir=None) == benchmark_options(dataset=dataset), argv
    # The presets differ where validation picked otherwise, so the choice above is seen.
    assert benchmark_config("ml-latest-small").history_dropout == 0.4
    assert benchmark_config("ml-100k") == benchmark_config(None)
    assert benchmark_options(dataset="ml-latest-small").batch_size == 512
    assert benchmark_config("ml-latest-small").softmax == "sampled"
    assert benchmark_options(dataset="ml-100k").batch_size == 256
    # The new-user preset: the benchmark one plus new-user examples and history dropout, and the
    # request time as hat functions where validation picked them.
    assert new_user_config("ml-latest-small") == replace(
        benchmark_config("ml-latest-small"),
        cold_examples_per_user=100,
        history_dropout=0.5,
        age_knots=32,
    )
    assert new_user_config("ml-100k").age_knots == 0
    assert (benchmark_options(dataset="ml-latest-small").decay, benchmark_options().decay) == (
        "cosine",
        "constant",
    )
    # A flag given wins over the preset; the others stay the preset's.
    args = parser.parse_args(["train-candidates", "--history-dropout", "0", "--epochs", "2"])
    config, options = tower_presets(args)
    assert (config.history_dropout, options.epochs, options.batch_size) == (0.0, 2, 512)
    assert config.mask_seen is True
    args = parser.parse_args(["train-candidates", "--no-mask-seen", "--dataset", "ml-100k"])
    assert tower_presets(args)[0].mask_seen is False
    args = parser.parse_args(["train-candidates", "--decay", "constant"])
    assert tower_presets(args)[1].decay == "constant"
    with pytest.raises(SystemExit):
        parser.parse_args(["train-candidates", "--decay", "linear"])


def test_recommend_and_both_exports_from_the_command_line(planted_artefact, tmp_path, capsys):
    art = str(planted_artefact)
    assert main(["recommend", "--artefact", art, "--user", "u0", "--k", "2"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["known_user"] and len(shown["items"]) == 2 and shown["model_version"]
    assert main(["recommend", "--artefact", art, "--history", "A", "--genres", "Horror"]) == 0
    assert {i["item_id"] for i in json.loads(capsys.readouterr().out)["items"]} == set("EFGH")
    assert main(["recommend", "--artefact", art, "--similar-to", "A", "--k", "1"]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 1

    users = tmp_path / "users.txt"
    users.write_text("u1\nu2\n")
    out = tmp_path / "cands"
    args = ["export-candidates", "--artefact", art, "--output", str(out), "--users", str(users)]
    assert main([*args, "--k", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["users"] == 2
    assert len(pd.read_parquet(out / "part-00000.parquet")) == 6

    models = tmp_path / "models"
    assert main(["export-savedmodels", "--artefact", art, "--output", str(models),
                 "--models", "query_tower"]) == 0  # fmt: skip
    assert (models / "query_tower" / "1" / "saved_model.pb").exists()


def test_command_line_errors_exit_2_with_the_reason(planted_artefact, tmp_path, caplog):
    art = str(planted_artefact)
    assert main(["recommend", "--artefact", art, "--history", "A", "--k", "0"]) == 2
    assert main(["recommend", "--artefact", art, "--similar-to", "nope"]) == 2
    assert main(["export-candidates", "--artefact", art, "--output", str(tmp_path),
                 "--users", str(tmp_path / "missing.txt")]) == 2  # fmt: skip
    assert "k must be a positive integer" in caplog.text
    assert "item_id 'nope' is not in the catalogue" in caplog.text
    assert "users file" in caplog.text


def test_train_ranker_then_recommend_ranks(tmp_path, capsys):
    log, out = _tiny_log(tmp_path / "log.csv"), tmp_path / "art"
    assert _run("train-candidates", log, out, TINY) == 0
    capsys.readouterr()
    args = ["train-ranker", "--interactions", str(log), "--artefact", str(out), "--epochs", "1",
            "--num-candidates", "3", "--events-per-user", "2", "--num-quantiles", "5"]  # fmt: skip
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["impression_rows"] > 0
    assert (out / "ranker" / "config.json").exists()
    assert main(["recommend", "--artefact", str(out), "--history", "A", "--k", "2"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["ranked"] and len(shown["items"]) == 2
    other = tmp_path / "other.csv"
    other.write_text("user,item,rating,timestamp\nx,A,4,1\nx,B,4,2\n")
    bad = ["train-ranker", "--interactions", str(other), "--artefact", str(out)]
    assert main(bad) == 2  # not the data the tower was trained on
    # A warm start retrains the ranker with the parent's settings, impressions included.
    frame = pd.read_csv(log)
    new = pd.DataFrame([(f"u{u}", "B", 5.0, 10_000 + u) for u in range(10)],
                       columns=["user", "item", "rating", "timestamp"])  # fmt: skip
    pd.concat([frame, new]).to_csv(log, index=False)
    child = tmp_path / "child"
    retrain = ["retrain", "--interactions", str(log), "--from", str(out), "--output", str(child),
               "--epochs", "1", "--batch-size", "16", "--verbose", "0"]  # fmt: skip
    assert main(retrain) == 0
    saved = json.loads((child / "ranker" / "config.json").read_text())
    assert saved["ranker"]["num_quantiles"] == 5 and saved["options"]["epochs"] == 1
    assert saved["impressions"] == {"num_candidates": 3, "events_per_user": 2}


def test_retrain_defaults_to_the_datasets_warm_start_preset():
    from serving.cli import build_parser
    from towers.presets import warm_start_options
    from towers.warmstart import WarmStart

    parser = build_parser()
    base = ["retrain", "--from", "p", "--output", "o"]
    retrain = parser.parse_args(base)  # ml-latest-small, the default dataset
    train = parser.parse_args(["train-candidates", "--output", "o"])
    options = retrain_options(retrain)
    assert options == warm_start_options(dataset="ml-latest-small")
    assert (options.learning_rate, options.epochs, options.batch_size) == (3e-3, 2, 256)
    assert options.decay == "constant" and retrain.replay_fraction == WarmStart().replay_fraction
    assert retrain.softmax is None  # WarmStart's rule: the full softmax where it fits
    assert tower_presets(train)[1].learning_rate == 0.02  # its preset from scratch
    for data in (["--dataset", "ml-100k"], ["--interactions", "mine.csv"]):  # the shared preset
        options = retrain_options(parser.parse_args(base + data))
        assert (options.learning_rate, options.epochs, options.batch_size) == (1e-3, 4, 256)
        assert options == warm_start_options()
    given = retrain_options(parser.parse_args(base + ["--epochs", "1", "--learning-rate", "0.01"]))
    assert (given.learning_rate, given.epochs) == (0.01, 1)


def test_retrain_warm_starts_from_a_parent_and_records_its_lineage(tmp_path, capsys, caplog):
    log, parent, child = _tiny_log(tmp_path / "log.csv"), tmp_path / "parent", tmp_path / "child"
    assert _run("train-candidates", log, parent, TINY) == 0
    capsys.readouterr()
    frame = pd.read_csv(log)
    new = pd.DataFrame(
        [(f"u{u}", "E", 5.0, 10_000 + u) for u in range(10)],
        columns=["user", "item", "rating", "timestamp"],
    )
    pd.concat([frame, new]).to_csv(log, index=False)
    args = ["retrain", "--interactions", str(log), "--from", str(parent), "--output", str(child)]
    assert main([*args, *"--epochs 2 --batch-size 16 --verbose 0".split()]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["new_items"] == 1 and printed["new_events"] == 10
    config = json.loads((child / "config.json").read_text())
    assert (
        config["lineage"]["parent_version"]
        == json.loads((parent / "config.json").read_text())["version"]
    )
    assert config["lineage"]["data_range"] == [0, 10_009]
    # The parent's Adam state was saved with it, continued, and saved again with the child.
    assert config["lineage"]["optimizer"] == "continued"
    assert (parent / "optimizer.npz").exists() and (child / "optimizer.npz").exists()
    fresh = tmp_path / "fresh"
    assert main([*args[:-1], str(fresh), *"--epochs 1 --verbose 0 --fresh-optimizer".split()]) == 0
    assert json.loads((fresh / "config.json").read_text())["lineage"]["optimizer"] == "fresh"
    capsys.readouterr()
    items = (child / "vocab" / "items.txt").read_text().split()
    assert items[:4] == (parent / "vocab" / "items.txt").read_text().split() and items[4] == "E"
    # Nothing new since the parent: a clean error, no artefact.
    assert main([*args[:-1], str(tmp_path / "again"), "--since", "20000"]) == 2
    assert "no events at or after" in caplog.text and not (tmp_path / "again").exists()
    # The parent itself (or a folder in it) as the output, and --home's flags: refused.
    before = (parent / "config.json").read_text()
    for output in (parent, parent / "next"):
        assert main([*args[:-1], str(output)]) == 2
        assert "is the parent artefact or inside it" in caplog.text
    assert (parent / "config.json").read_text() == before and not (parent / "next").exists()
    assert main([*args[:-1], str(tmp_path / "x"), "--tolerance", "0.5"]) == 2
    assert "--tolerance apply to --home (the guarded promotion) only" in caplog.text
    home_args = ["retrain", "--interactions", str(log), "--home", str(tmp_path / "h")]
    assert main([*home_args, "--output", str(tmp_path / "x")]) == 2
    assert "drop --output and --from" in caplog.text
    assert not (tmp_path / "x").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_train_ranker_flags_reach_the_config_and_options():
    from ranking.model import RankerConfig
    from ranking.train import RankerOptions
    from serving.cli import _build

    parser = build_parser()
    args = parser.parse_args(["train-ranker", "--artefact", "a", "--rated-bag", "--max-history",
                              "200", "--schedule", "cosine", "--label-horizon", "30",
                              "--tower-score-weight", "0.2"])  # fmt: skip
    assert _build(RankerConfig, args) == RankerConfig(
        rated_bag=True, max_history=200, tower_score_weight=0.2
    )
    assert _build(RankerOptions, args) == RankerOptions(schedule="cosine", label_horizon=30)
    assert parser.parse_args(["-v", "train-ranker", "--artefact", "a"]).debug  # not overridden
    plain = parser.parse_args(["train-ranker", "--artefact", "a"])
    assert _build(RankerConfig, plain) == RankerConfig()
    assert _build(RankerOptions, plain) == RankerOptions()


def test_a_users_csv_with_an_empty_id_is_refused_by_row(planted_artefact, tmp_path, caplog):
    from serving.cli import read_user_list

    good = tmp_path / "good.csv"
    good.write_text("user_id,x\n u1 ,a\nNA,b\n")
    assert read_user_list(str(good)) == ["u1", "NA"]  # stripped; "NA" is an ID, not missing
    bad = tmp_path / "users.csv"
    bad.write_text("user_id,x\nu1,a\n,b\nu2,c\n")
    art = str(planted_artefact)
    args = ["export-candidates", "--artefact", art, "--output", str(tmp_path / "out")]
    assert main([*args, "--users", str(bad)]) == 2
    assert f"users file {bad} has an empty user_id in data row 2" in caplog.text
    assert not (tmp_path / "out").exists()  # nothing exported for a user "nan"
    parquet = tmp_path / "users.parquet"
    pd.DataFrame({"user_id": ["u1", "  ", None]}).to_parquet(parquet)
    assert main([*args, "--users", str(parquet)]) == 2
    assert "has an empty user_id in data row 2 (2 empty in all)" in caplog.text


def test_user_lists_with_a_byte_order_mark_or_nothing_and_quoted_ids(tmp_path):
    from serving.cli import _split, read_user_list

    marked = tmp_path / "ids.txt"
    marked.write_bytes(b"\xef\xbb\xbfu0\r\nu1\r\n")  # as Windows editors save it
    assert read_user_list(str(marked)) == ["u0", "u1"]
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty.csv: file is empty"):
        read_user_list(str(tmp_path / "empty.csv"))
    assert _split('"Star Wars, Episode IV", 260,,') == ["Star Wars, Episode IV", "260"]
    with pytest.raises(ValueError, match="as comma-separated IDs"):
        _split('"unclosed, 260')


def test_export_savedmodels_refuses_an_existing_version_and_maps_tf_errors(
    planted_artefact, tmp_path, caplog, monkeypatch
):
    import export.savedmodel
    from towers._tf import tf

    args = ["export-savedmodels", "--artefact", str(planted_artefact), "--output",
            str(tmp_path), "--models", "query_tower"]  # fmt: skip
    assert main(args) == 0
    assert main(args) == 2
    assert f"{tmp_path / 'query_tower' / '1'} already exists" in caplog.text
    assert main([*args, "--overwrite"]) == 0

    def damaged(artefact):
        raise tf.errors.DataLossError(None, None, "weights checksum mismatch")

    monkeypatch.setattr(export.savedmodel, "load_artefact", damaged)
    assert main([*args, "--overwrite"]) == 2  # a TensorFlow error: a message, no traceback
    assert "weights checksum mismatch" in caplog.text


def test_a_users_file_with_some_demographic_columns_trains(tmp_path, capsys):
    log, out = _tiny_log(tmp_path / "log.csv"), tmp_path / "art"
    users = sorted(pd.read_csv(log)["user"].astype(str).unique())
    (tmp_path / "users.csv").write_text(
        "user_id,age,gender\n"
        + "".join(f"{u},{20 + n},{'MF'[n % 2]}\n" for n, u in enumerate(users))
    )
    args = ["train-candidates", "--interactions", str(log), "--users", str(tmp_path / "users.csv"),
            "--output", str(out), *TINY.split()]  # fmt: skip
    assert main(args) == 0
    vocab = json.loads((out / "vocab" / "demographics.json").read_text())
    assert vocab["gender"] == ["F", "M"] and vocab["occupation"] == ["(no values)"]
    capsys.readouterr()
    # A known user (their demographics are looked up; they have watched every item).
    assert main(["recommend", "--artefact", str(out), "--user", users[0], "--k", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == []
    assert main(["recommend", "--artefact", str(out), "--history", "A", "--k", "2"]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 2


def test_output_and_source_mistakes_are_refused_before_training(tmp_path, caplog):
    log = _tiny_log(tmp_path / "log.csv")
    # The folder holding the data is not an artefact: nothing is trained, nothing is lost.
    assert _run("train-candidates", log, tmp_path, TINY) == 2
    assert "is a directory that is not a nextwatch artefact" in caplog.text
    assert log.exists() and not (tmp_path / "config.json").exists()
    assert main(["train-candidates", "--users", "u.csv", "--output", str(tmp_path / "a")]) == 2
    assert "users apply to your own interactions file only" in caplog.text
    assert main(["train-candidates", "--user-col", "who", "--output", str(tmp_path / "a")]) == 2
    assert "column names apply to your own interactions file only" in caplog.text


def test_evaluate_names_other_data_and_a_missing_output_folder(tmp_path, caplog):
    log, out = _tiny_log(tmp_path / "log.csv"), tmp_path / "art"
    assert _run("train-candidates", log, out, f"--protocol leave-last-one {TINY}") == 0
    # The same bytes read with other columns are other data.
    assert main(["evaluate", "--interactions", str(log), "--user-col", "item", "--item-col",
                 "user", "--protocol", "leave-last-one", "--artefact", str(out)]) == 2  # fmt: skip
    assert "was trained on other data than log as read now" in caplog.text
    assert (
        _run(
            "evaluate",
            log,
            out,
            f"--protocol leave-last-one --output {tmp_path / 'nodir' / 'm.json'}",
        )
        == 2
    )
    assert "nodir does not exist" in caplog.text


def test_shards_refuse_the_flags_they_would_ignore(tmp_path, caplog):
    args = ["train-candidates", "--shards", str(tmp_path), "--output", str(tmp_path / "a")]
    assert main([*args, "--protocol", "temporal-user-20"]) == 2
    assert "--protocol do not apply to --shards" in caplog.text
    assert main([*args, "--interactions", "log.csv"]) == 2
    assert "--interactions do not apply to --shards" in caplog.text


def test_recommend_and_train_ranker_refuse_mistakes_before_working(
    planted_artefact, tmp_path, caplog
):
    art = str(planted_artefact)
    assert main(["recommend", "--artefact", art, "--similar-to", "A", "--genres", "X"]) == 2
    assert "--genres do not apply to --similar-to" in caplog.text
    assert main(["recommend", "--artefact", art, "--similar-to", ""]) == 2  # not a new user
    (tmp_path / "notranker").mkdir()
    (tmp_path / "notranker" / "x.txt").write_text("mine")
    assert main(["train-ranker", "--artefact", art, "--output", str(tmp_path / "notranker")]) == 2
    assert "exists and is not a ranker" in caplog.text
    assert "ranker trained" not in caplog.text  # refused before any training
    assert main(["evaluate", "--artefact", art, "--output", str(tmp_path)]) == 2
    assert "is a directory: give a file name" in caplog.text


def test_serve_takes_the_share_of_a_list_for_items_added_from_metadata(capsys):
    parser = build_parser()
    assert parser.parse_args(["serve"]).placed_share == 0.1
    assert parser.parse_args(["serve", "--placed-share", "0.25"]).placed_share == 0.25
    assert parser.parse_args(["serve", "--placed-share", "None"]).placed_share is None
    for bad in ("1.5", "-0.1", "nan", "a tenth"):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", "--placed-share", bad])
        assert "expected a number in [0, 1] or 'none'" in capsys.readouterr().err
