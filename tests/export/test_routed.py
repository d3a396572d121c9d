"""Routed SavedModels: for an artefact with a new-user tower, each row is answered by the tower
the service picks, loaded without the project, and equal to the Python API."""

import json
import subprocess
import sys

import numpy as np
import pytest

from export.ranking_savedmodel import export_ranking_savedmodels
from export.savedmodel import NO_ITEM_SCORE, export_savedmodels, load_scann_model
from serving.api import Recommender
from tests.export.test_savedmodel import LOADER
from towers._tf import tf
from towers.artefact import NEW_USER_DIR

K = 4
LIMIT = 1
# Distinct known items 0, 1, 1 (a repeat and an unknown ID), 2, 3: at a limit of 1 the first
# three rows go to the new-user tower and the last two to the main one.
HISTORIES = [["", "", ""], ["A", "", ""], ["A", "A", "zzz"], ["A", "B", ""], ["C", "D", "E"]]
GENERATORS = ["new-user", "new-user", "new-user", "main", "main"]
UNKNOWN = {"age": [-1.0], "gender": [""], "occupation": [""], "zip_prefix": [""]}


def _features(rows: int) -> dict[str, list]:
    return {name: value * rows for name, value in UNKNOWN.items()}


@pytest.fixture(scope="module")
def routed(two_towers, tmp_path_factory):
    base = tmp_path_factory.mktemp("routed")
    export_savedmodels(two_towers, base, k=K, new_user_max=LIMIT)
    request = base / "request.json"
    request.write_text(json.dumps({"history": HISTORIES, "features": _features(len(HISTORIES))}))
    (base / "load.py").write_text(LOADER)
    done = subprocess.run(
        [sys.executable, str(base / "load.py"), str(base), str(request)],
        cwd=base, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return base, json.loads(done.stdout.strip().splitlines()[-1])


def _api(artefact) -> Recommender:
    rec = Recommender.load(artefact, users=False)
    rec.new_user_max = LIMIT
    return rec


def test_each_row_is_answered_by_the_tower_the_api_picks(two_towers, routed):
    rec = _api(two_towers)
    got = routed[1]["retrieval_brute_force"]
    assert got["generator"] == GENERATORS
    for row, history in enumerate(HISTORIES):
        want = rec.recommend(history=[h for h in history if h], k=K, rank=False)
        assert want.generator == GENERATORS[row]
        n = len(want)
        assert got["item_ids"][row][:n] == want.item_ids
        np.testing.assert_allclose(
            got["scores"][row][:n], [r.score for r in want], rtol=1e-5, atol=1e-5
        )
        assert got["item_ids"][row][n:] == [""] * (K - n)
        assert got["scores"][row][n:] == [NO_ITEM_SCORE] * (K - n)
    assert got["model_version"] == [rec.version] * len(HISTORIES)
    # The two towers answer differently, so the routing is visible in the items.
    main_only = _api(two_towers)
    main_only.new_user = None
    assert any(
        main_only.recommend(history=[h for h in history if h], k=K, rank=False).item_ids
        != got["item_ids"][row]
        for row, history in enumerate(HISTORIES[:3])
    )


def test_scann_routes_alike_and_the_query_tower_stays_the_main_ones(two_towers, routed):
    rec = _api(two_towers)
    got = routed[1]["retrieval_scann"]
    assert got["generator"] == GENERATORS
    assert rec.retriever.index.params.mode == rec.new_user.index.params.mode == "brute_force"
    for row, history in enumerate(HISTORIES):
        want = rec.recommend(history=[h for h in history if h], k=K, rank=False).item_ids
        assert len(set(got["item_ids"][row]) & set(want)) / len(want) >= 0.95
        # Each item carries its score in the tower that answered: each tower searches its own
        # item vectors (two ScaNN searchers in one model once shared the first one's).
        every = rec.recommend(history=[h for h in history if h], k=8, rank=False)
        score = {r.item_id: r.score for r in every}
        items = [i for i in got["item_ids"][row] if i]
        np.testing.assert_allclose(
            got["scores"][row][: len(items)], [score[i] for i in items], rtol=1e-3, atol=1e-3
        )
    assert set(routed[1]["query_tower"]) == {"user_vector", "model_version"}


@pytest.mark.parametrize("name", ["retrieval_brute_force", "retrieval_scann"])
@pytest.mark.parametrize("rows", [[0, 1, 2], [3, 4], [4, 0]])
def test_a_batch_of_one_kind_or_in_any_order_is_answered_alike(routed, name, rows):
    model = load_scann_model(routed[0] / name / "1")
    feed = {name: tf.constant(value, tf.float32 if name == "age" else tf.string)
            for name, value in _features(len(rows)).items()}  # fmt: skip
    out = model.signatures["serving_default"](
        history=tf.constant([HISTORIES[r] for r in rows]), **feed
    )
    full = routed[1][name]
    for i, r in enumerate(rows):
        items = [b.decode() for b in out["item_ids"].numpy()[i]]
        # ScaNN's approximate scores may order near-ties another way in another batch.
        same = (
            items == full["item_ids"][r]
            if name.endswith("force")
            else set(items) == set(full["item_ids"][r])
        )
        assert same
        assert out["generator"].numpy()[i].decode() == GENERATORS[r]


def test_without_routing_the_main_tower_answers_and_a_bad_limit_is_named(two_towers, tmp_path):
    paths = export_savedmodels(
        two_towers, tmp_path, k=K, models=("retrieval_brute_force",), new_user_max=None
    )
    model = tf.saved_model.load(str(paths["retrieval_brute_force"]))
    feed = {name: tf.constant(value, tf.float32 if name == "age" else tf.string)
            for name, value in _features(1).items()}  # fmt: skip
    out = model.signatures["serving_default"](history=tf.constant([["A", ""]]), **feed)
    assert "generator" not in out
    main_only = _api(two_towers)
    main_only.new_user = None
    want = main_only.recommend(history=["A"], k=K, rank=False).item_ids
    assert [b.decode() for b in out["item_ids"].numpy()[0]][: len(want)] == want
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="new_user_max"):
            export_savedmodels(two_towers, tmp_path / "bad", new_user_max=bad)
        with pytest.raises(ValueError, match="new_user_max"):
            export_ranking_savedmodels(two_towers, tmp_path / "bad", new_user_max=bad)
    assert (two_towers / NEW_USER_DIR / "config.json").exists()


@pytest.mark.parametrize("fixture", ["two_towers", "two_rankers"])
def test_two_stage_routes_to_the_generators_ranker_as_the_ranked_api(fixture, request, tmp_path):
    artefact = request.getfixturevalue(fixture)
    paths = export_ranking_savedmodels(
        artefact, tmp_path, k=3, num_candidates=5, new_user_max=LIMIT
    )
    # The new-user tower's own ranker, where it has one, is exported alone too.
    assert ("new_user_ranker" in paths) == (fixture == "two_rankers")
    model = tf.saved_model.load(str(paths["two_stage"])).signatures["serving_default"]
    rows = len(HISTORIES)
    out = model(
        history=tf.constant(HISTORIES),
        **{name: tf.constant(v, tf.float32 if name == "age" else tf.string)
           for name, v in _features(rows).items()},
        user_count=tf.constant([float(len({h for h in row if h})) for row in HISTORIES]),
        user_mean=tf.constant([-1.0] * rows), time_since_last=tf.constant([-1.0] * rows),
    )  # fmt: skip
    rec = _api(artefact)
    rec.num_candidates = 5
    assert (rec.new_user_reranker is not None) == (fixture == "two_rankers")
    assert [g.decode() for g in out["generator"].numpy()] == GENERATORS
    for row, history in enumerate(HISTORIES):
        want = rec.recommend(history=[h for h in history if h], k=3)
        assert want.ranked and want.generator == GENERATORS[row]
        assert [b.decode() for b in out["item_ids"].numpy()[row]] == want.item_ids
        np.testing.assert_allclose(out["scores"].numpy()[row], [r.score for r in want], rtol=1e-4)
    assert [v.decode() for v in out["model_version"].numpy()] == [rec.version] * rows


def test_the_cli_routes_unless_told_to_export_the_main_tower_only(two_towers, tmp_path):
    from serving.cli import main

    for flags, routes in (([], True), (["--main-tower-only"], False)):
        base = tmp_path / str(routes)
        assert main(["export-savedmodels", "--artefact", str(two_towers), "--output", str(base),
                     "--models", "retrieval_brute_force", "--k", str(K), *flags]) == 0  # fmt: skip
        model = tf.saved_model.load(str(base / "retrieval_brute_force" / "1"))
        out = model.signatures["serving_default"](
            history=tf.constant([["A", ""]]),
            **{name: tf.constant(v, tf.float32 if name == "age" else tf.string)
               for name, v in _features(1).items()},
        )  # fmt: skip
        assert ("generator" in out) == routes
