import numpy as np
import pandas as pd
import pytest

from towers.artefact import load_artefact, save_artefact
from towers.data import Dataset, empty_item_metadata
from towers.features import query_inputs
from towers.model import TowerConfig
from towers.train import TrainOptions, train_tower

SMALL = TowerConfig(
    embedding_dim=8, token_dim=4, output_dim=8, depth=1, max_history=3, max_examples_per_user=None
)


def planted_log() -> Dataset:
    """40 users watch A then B; 40 watch C then D; each then watches one of E..H."""
    rows = []
    for u in range(80):
        first, second = ("A", "B") if u < 40 else ("C", "D")
        rows += [
            (f"u{u}", first, 1.0, 1),
            (f"u{u}", second, 1.0, 2),
            (f"u{u}", "EFGH"[u % 4], 1.0, 3),
        ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = empty_item_metadata(list("ABCDEFGH"))
    items["genres"] = [["x"], ["x"], ["y"], ["y"], [], [], [], []]
    return Dataset("planted", frame, items, None, "0" * 64)


@pytest.fixture(scope="module")
def trained():
    return train_tower(
        planted_log(), SMALL, TrainOptions(epochs=60, batch_size=32, learning_rate=0.03, verbose=0)
    )


def _scores(model, histories):
    logits = model.logits(model(query_inputs(histories, max_history=3))).numpy()
    return {i: logits[:, n] for n, i in enumerate(model.item_ids)}, logits


def test_planted_next_watch_is_recovered(trained):
    model = trained.model
    _, logits = _scores(model, [["A"], ["C"]])
    items = np.array(model.item_ids)
    assert items[np.argmax(logits[0])] == "B"
    assert items[np.argmax(logits[1])] == "D"


def test_empty_and_unknown_histories_score_like_the_first_watch(trained):
    model = trained.model
    _, logits = _scores(model, [[], ["not-an-item"]])
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-6)
    top2 = set(np.array(model.item_ids)[np.argsort(-logits[0])[:2]])
    assert top2 == {"A", "C"}


def test_history_rows_are_the_lookup_rows_and_give_the_same_user_vectors(trained):
    model = trained.model
    inputs = query_inputs([["A", "not-an-item"], []], max_history=3)
    rows = model.history_rows(inputs["history"])
    a, b = 2 + model.item_ids.index("A"), 1  # items from 2 on, the OOV bucket 1, padding 0
    np.testing.assert_array_equal(rows, [[0, a, b], [0, 0, 0]])
    assert rows.dtype == np.int32
    by_rows = {**inputs, "history_rows": rows}
    del by_rows["history"]
    np.testing.assert_allclose(model(by_rows).numpy(), model(inputs).numpy(), rtol=1e-6)


def test_batch_equals_single(trained):
    model = trained.model
    _, both = _scores(model, [["A"], ["C", "D"]])
    _, one = _scores(model, [["C", "D"]])
    np.testing.assert_allclose(both[1], one[0], rtol=1e-5, atol=1e-6)


def test_save_then_load_gives_equal_outputs(trained, tmp_path):
    save_artefact(trained, tmp_path / "art")
    loaded = load_artefact(tmp_path / "art")
    _, before = _scores(trained.model, [["A", "B"], []])
    _, after = _scores(loaded, [["A", "B"], []])
    np.testing.assert_allclose(before, after, rtol=1e-6)
    vectors = np.load(tmp_path / "art" / "item_vectors.npy")
    assert vectors.shape == (8, 9)
    # the bias is folded in: [u, 1] . [w, b] is the full logit
    user = trained.model(query_inputs([["A"]], max_history=3)).numpy()
    np.testing.assert_allclose(
        np.append(user[0], 1.0) @ vectors.T,
        _scores(trained.model, [["A"]])[1][0],
        rtol=1e-5,
        atol=1e-5,
    )


def test_sampled_softmax_trains_too():
    config = TowerConfig(**{**SMALL.to_dict(), "softmax": "sampled", "num_negatives": 4})
    result = train_tower(
        planted_log(), config, TrainOptions(epochs=60, batch_size=32, learning_rate=0.03, verbose=0)
    )
    assert result.metrics["softmax"] == "sampled"
    _, logits = _scores(result.model, [["A"]])
    assert np.array(result.model.item_ids)[np.argmax(logits[0])] == "B"


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="softmax must be"):
        TowerConfig(softmax="partial").use_full_softmax(10)
    with pytest.raises(ValueError, match="epochs and batch_size"):
        train_tower(planted_log(), SMALL, TrainOptions(epochs=0))
    with pytest.raises(FileNotFoundError, match="not a nextwatch artefact"):
        load_artefact("/nonexistent")


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"output_dim": 0}, "output_dim"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"num_negatives": -5}, "num_negatives"),
        ({"label_horizon": 0}, "label_horizon"),
        ({"depth": -1}, "depth"),
        ({"cold_examples_per_user": -1}, "cold_examples_per_user"),
        ({"recent_history": 100}, "recent_history"),
        ({"dropout": 1.5}, "dropout"),
        ({"history_dropout": 1.0}, "history_dropout"),
    ],
)
def test_bad_tower_settings_are_refused_by_name(overrides, name):
    with pytest.raises(ValueError, match=name):
        TowerConfig(**overrides)


@pytest.mark.parametrize("rate", [float("nan"), float("inf"), 0.0, -1.0])
def test_a_bad_learning_rate_is_refused(rate):
    from towers.train import TrainOptions

    with pytest.raises(ValueError, match="learning_rate"):
        TrainOptions(learning_rate=rate)


def test_a_save_that_dies_leaves_the_previous_artefact_whole(
    planted_artefact, tmp_path, monkeypatch
):
    import json
    import shutil

    import towers.artefact as artefact_module
    from towers.artefact import load_artefact, save_artefact
    from towers.train import TrainOptions, TrainResult

    target = tmp_path / "artefact"
    shutil.copytree(planted_artefact, target)
    before = (target / "config.json").read_text()
    model = load_artefact(target)
    result = TrainResult(model, model.config, TrainOptions(), "planted", "x" * 64)

    def dies(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(artefact_module, "save_arrays", dies)
    with pytest.raises(OSError, match="disk full"):
        save_artefact(result, target)
    assert (target / "config.json").read_text() == before  # the old artefact, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artefact"]  # no partial directory
    monkeypatch.undo()
    save_artefact(result, target)
    assert json.loads((target / "config.json").read_text())["data_checksum"] == "x" * 64
    assert not (target / "ranker").exists() and load_artefact(target).num_items == model.num_items


def test_a_save_removes_what_a_killed_save_left_and_keeps_a_running_ones(
    planted_artefact, tmp_path
):
    import os
    import shutil

    from towers.artefact import load_artefact, save_artefact
    from towers.train import TrainOptions, TrainResult

    target = tmp_path / "artefact"
    shutil.copytree(planted_artefact, target)
    dead = 2**22 + 1  # above Linux's default pid_max: no such process
    for name in (f".artefact.partial-{dead}-x1", f".artefact.old-{dead}-x2",
                 f".artefact.partial-{os.getppid()}-x3", ".artefact.partial-junk"):  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights").write_text("half")
    model = load_artefact(target)
    save_artefact(TrainResult(model, model.config, TrainOptions(), "planted", "x" * 64), target)
    # The dead process's and the unnamed leftovers are gone; the live parent process's stays.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".artefact.partial-{os.getppid()}-x3", "artefact"
    ]  # fmt: skip


def test_an_output_that_is_not_an_artefact_is_refused_and_kept(planted_artefact, tmp_path):
    import shutil

    from towers.artefact import check_output, load_artefact, save_artefact
    from towers.train import TrainOptions, TrainResult

    model = load_artefact(planted_artefact)
    result = TrainResult(model, model.config, TrainOptions(), "planted", "x" * 64)
    data = tmp_path / "data"
    data.mkdir()
    (data / "log.csv").write_text("user,item\n")
    (tmp_path / "report.txt").write_text("mine")
    for target in (data, tmp_path / "report.txt"):
        with pytest.raises(FileExistsError, match="would replace it; choose a new directory"):
            save_artefact(result, target)
    assert (data / "log.csv").read_text() == "user,item\n"
    assert (tmp_path / "report.txt").read_text() == "mine"
    # An artefact, an empty directory and one with only a run's logs/ may be written over.
    shutil.copytree(planted_artefact, tmp_path / "old")
    (tmp_path / "empty").mkdir()
    (tmp_path / "logs-only" / "logs").mkdir(parents=True)
    for target in ("old", "empty", "logs-only", "new"):
        check_output(tmp_path / target)
    save_artefact(result, tmp_path / "logs-only")
    assert (tmp_path / "logs-only" / "logs").is_dir() and load_artefact(tmp_path / "logs-only")


def test_bag_mean_averages_each_rows_counted_slots_over_distinct_vectors():
    from towers._tf import tf
    from towers.model import _bag_mean

    # Distinct vectors a=(1,0), b=(0,2), c=(4,4); histories [a, b, a], [c, c, pad], [pad x 3].
    table = tf.constant([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    position = tf.constant([0, 1, 0, 2, 2, 0, 0, 0, 0])
    mask = tf.constant([[True, True, True], [True, True, False], [False, False, False]])
    with tf.GradientTape() as tape:
        tape.watch(table)
        means = _bag_mean(table, position, mask)
        loss = tf.reduce_sum(means * tf.constant([[1.0, 1.0], [3.0, 0.0], [9.0, 9.0]]))
    np.testing.assert_allclose(means.numpy(), [[2 / 3, 2 / 3], [4.0, 4.0], [0.0, 0.0]], rtol=1e-6)
    # d loss / d a: row 0 counts a twice, weight 1/3 each, times (1, 1); c: row 1, 2 x 1/2 x (3, 0).
    np.testing.assert_allclose(
        tape.gradient(loss, table).numpy(), [[2 / 3, 2 / 3], [1 / 3, 1 / 3], [3.0, 0.0]], rtol=1e-6
    )


def test_mask_seen_stops_the_model_pushing_down_what_the_user_watched():
    # Everyone watches P first, then one of E..H. Trained as usual, P is a negative of every
    # [P] -> X example, so the model learns to score P low after P, spending capacity on an
    # item a request excludes anyway; with mask_seen nothing pushes it down.
    rows = []
    for u in range(40):
        rows += [(f"u{u}", "P", 1.0, 1), (f"u{u}", "EFGH"[u % 4], 1.0, 2)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    data = Dataset("p-first", frame, empty_item_metadata(list("PEFGH")), None, "0" * 64)
    options = TrainOptions(epochs=20, batch_size=16, learning_rate=0.05, verbose=0)
    margins = {}
    for mask in (False, True):
        for softmax in ("full", "sampled"):
            config = TowerConfig(
                **{**SMALL.to_dict(), "mask_seen": mask, "softmax": softmax, "num_negatives": 4}
            )
            model = train_tower(data, config, options).model
            scores, _ = _scores(model, [["P"]])
            margins[mask, softmax] = float(scores["P"][0] - max(scores[i][0] for i in "EFGH"))
    for softmax in ("full", "sampled"):
        assert margins[False, softmax] < -1  # pushed below the items that can follow
        assert margins[True, softmax] > max(0, margins[False, softmax] + 2)


def test_age_knots_learn_what_was_watched_when_and_serve_it_in_numpy(tmp_path):
    # Four eras of users; each user's first watch is X in eras 0 and 2 and Y in eras 1 and 3.
    # For an empty history a depth-0 tower's X-minus-Y score is c0 + c1 a + c2 a^2 in the paper's
    # (age, age^2) features: at most two sign changes over the four eras, so it must get one
    # era wrong. Four hat functions, one knot per era, can get all four right.
    from towers.examples import example_age
    from towers.query import QueryEncoder

    rows = []
    for u in range(80):
        era = u % 4
        rows += [(f"u{u}", "XY"[era % 2], 1.0, 100 * era), (f"u{u}", "Z", 1.0, 100 * era + 1)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    data = Dataset("eras", frame, empty_item_metadata(["X", "Y", "Z"]), None, "0" * 64)
    options = TrainOptions(epochs=80, batch_size=32, learning_rate=0.05, verbose=0)
    right = {}
    for knots in (0, 4):
        config = TowerConfig(**{**SMALL.to_dict(), "depth": 0, "age_knots": knots})
        result = train_tower(data, config, options)
        model = result.model
        ages = example_age(np.array([0.0, 100.0, 200.0, 300.0]), model.time_window)
        inputs = query_inputs([[]] * 4, max_history=3, example_age=ages)
        logits = model.logits(model(inputs)).numpy()
        x, y = model.item_ids.index("X"), model.item_ids.index("Y")
        right[knots] = [bool((logits[e, x] > logits[e, y]) == (e % 2 == 0)) for e in range(4)]
        encoder = QueryEncoder.from_model(model)
        np.testing.assert_allclose(encoder(inputs), model(inputs).numpy(), rtol=1e-5, atol=1e-6)
    assert right[4] == [True] * 4
    assert not all(right[0])
    save_artefact(result, tmp_path / "m")
    loaded = load_artefact(tmp_path / "m")
    assert loaded.config.age_knots == 4
    np.testing.assert_allclose(loaded(inputs).numpy(), model(inputs).numpy(), rtol=1e-5, atol=1e-6)
    # The SavedModel runs the same graph, asked now (age 0).
    import tensorflow as tf

    from export.savedmodel import export_savedmodels

    paths = export_savedmodels(tmp_path / "m", tmp_path / "tfs", models=("query_tower",))
    served = tf.saved_model.load(str(paths["query_tower"])).signatures["serving_default"]
    got = served(history=tf.constant([["", "", ""]]))
    want = model(query_inputs([[]], max_history=3)).numpy()
    np.testing.assert_allclose(got["user_vector"].numpy(), want, rtol=1e-5, atol=1e-6)


def test_age_hats_by_hand():
    from towers.features import age_hats

    got = age_hats(np.array([0.0, 0.25, 0.5, 1.0, -3.0, 7.0]), 3)
    want = [[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]]
    np.testing.assert_allclose(got, want, atol=1e-7)
    with pytest.raises(ValueError, match="age_knots"):
        TowerConfig(age_knots=1)
    with pytest.raises(ValueError, match="age_knots"):
        TowerConfig(age_knots=4, use_example_age=False)


def test_keras_does_not_walk_the_vocabularies():
    # Keras wraps a plain list attribute in a tracked list and walks all of it each time it
    # collects variables: with a million items, seconds each time (docs/scale.md, "Start-up").
    from towers._tf import tf
    from towers.model import CandidateTower

    ids = [f"i{n}" for n in range(300)]
    tokens = np.ones((300, SMALL.max_tokens_per_item), np.int32)
    model = CandidateTower(SMALL, ids, token_vocabulary=["t"] * 300, item_token_table=tokens)
    structures = tf.__internal__.tracking.TrackableDataStructure
    walked = [t for t in model._self_tracked_trackables if isinstance(t, structures)]
    assert all(len(t._values) < 300 for t in walked)
    assert model.item_ids == ids and isinstance(model.item_ids, list)
    assert model.token_vocabulary == ["t"] * 300
