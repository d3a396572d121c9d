"""The ranker and two-stage SavedModels, loaded without the project, equal the ranked API."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from export.ranking_savedmodel import export_ranking_savedmodels
from ranking.scorer import RankScorer
from serving.api import Recommender, distinct_history

HISTORIES = [["A", "", ""], ["C", "zzz", "D"]]
# max_history is 3: a repeat (the service's bag is B, A), a repeat in a history longer than
# max_history with an unknown ID (bag C, D, A), and a history longer than max_history (C, D, E)
LONG_HISTORIES = [
    ["A", "B", "A", "", "", ""], ["B", "A", "C", "zzz", "D", "A"], ["A", "B", "C", "D", "E", ""],
]  # fmt: skip
LONG_RATINGS = [[1.0, 2.0, 5.0, -1.0, -1.0, -1.0], [4.0, 1.0, 3.0, -1.0, 2.0, 5.0],
                [5.0, -1.0, 1.0, 2.0, 4.0, -1.0]]  # fmt: skip
CANDIDATES, TOWER_SCORES = ["F", "G", "H"], [1.0, 0.5, 0.2]
CLOCK, LAST_WATCH, USER_MEAN = 1000.0, 900.0, 3.5
DEMOGRAPHICS = {"gender": "F", "occupation": "student", "zip_prefix": "1"}
LOADER = textwrap.dedent(
    """
    import json, sys
    for name in ("towers", "ranking", "serving", "export"):
        sys.modules[name] = None
    import tensorflow as tf
    base, request = sys.argv[1], json.load(open(sys.argv[2]))
    out, models = {}, {}
    for key, inputs in request.items():  # key: "<model>" or "<model>:<what>"
        name = key.split(":")[0]
        if name not in models:
            models[name] = tf.saved_model.load(f"{base}/{name}/1").signatures["serving_default"]
        leaf = lambda v: leaf(v[0]) if isinstance(v, list) else v
        feed = {k: tf.constant(v, tf.string if isinstance(leaf(v), str) else tf.float32)
                for k, v in inputs.items()}
        out[key] = {k: v.numpy().tolist() for k, v in models[name](**feed).items()}
        out[key]["model_version"] = [b.decode() for b in out[key]["model_version"]]
        if "item_ids" in out[key]:
            out[key]["item_ids"] = [[b.decode() for b in row] for row in out[key]["item_ids"]]
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def outputs(planted_ranked_artefact, tmp_path_factory):
    base = tmp_path_factory.mktemp("ranking-models")
    export_ranking_savedmodels(planted_ranked_artefact, base, k=3, num_candidates=5)
    features = {"age": [30.0, -1.0], "gender": ["F", ""], "occupation": ["student", ""],
                "zip_prefix": ["1", ""]}  # fmt: skip
    request = {
        "ranker": {
            "item_id": ["B", "zzz"], "history": [["A", "C"], ["", "D"]],
            "history_rating": [[5.0, 2.0], [-1.0, 3.0]],
            "tower_score": [1.0, 0.5], "tower_rank": [1.0, 2.0], "time_since_last": [-1.0, 60.0],
            "prev_impressions": [0.0, 0.0], "user_count": [1.0, 0.0], "user_mean": [4.0, -1.0],
            "item_popularity": [40.0, 0.0], "gender": ["F", ""], "occupation": ["student", ""],
            "zip_prefix": ["1", ""],
        },
        "two_stage": {"history": HISTORIES, **features, "user_count": [1.0, 3.0],
                      "user_mean": [-1.0, -1.0], "time_since_last": [-1.0, -1.0]},
    }  # fmt: skip
    request["two_stage:long"] = {
        "history": LONG_HISTORIES, "age": [-1.0] * 3, "gender": [""] * 3, "occupation": [""] * 3,
        "zip_prefix": [""] * 3, "user_mean": [-1.0] * 3, "time_since_last": [-1.0] * 3,
        "user_count": [_count(row) for row in LONG_HISTORIES],
    }  # fmt: skip
    request["ranker:long"] = _long_ranker_request(planted_ranked_artefact)
    (base / "request.json").write_text(json.dumps(request))
    (base / "load.py").write_text(LOADER)
    done = subprocess.run(
        [sys.executable, str(base / "load.py"), str(base), str(base / "request.json")],
        cwd=base, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return request, json.loads(done.stdout.strip().splitlines()[-1])


def _count(history: list[str]) -> float:
    """The API's rating count for a request ``history``: its distinct items."""
    return float(len(distinct_history([h for h in history if h])))


def _long_ranker_request(artefact) -> dict[str, list]:
    """One row per (history of ``LONG_HISTORIES``, candidate), as the service would score it."""
    popularity = Recommender.load(artefact).reranker.popularity
    rows = [(h, r, c) for h, r in zip(LONG_HISTORIES, LONG_RATINGS, strict=True)
            for c in CANDIDATES]  # fmt: skip
    n = len(rows)
    return {
        "item_id": [c for _, _, c in rows], "history": [h for h, _, _ in rows],
        "history_rating": [r for _, r, _ in rows],
        "tower_score": TOWER_SCORES * len(LONG_HISTORIES),
        "tower_rank": [1.0, 2.0, 3.0] * len(LONG_HISTORIES),
        "time_since_last": [CLOCK - LAST_WATCH] * n, "prev_impressions": [0.0] * n,
        "user_count": [_count(row) for row, _, _ in rows],
        "user_mean": [USER_MEAN] * n,
        "item_popularity": [popularity.get(c, 0.0) for _, _, c in rows],
        **{col: [value] * n for col, value in DEMOGRAPHICS.items()},
    }  # fmt: skip


def _served_bag(history: list[str], ratings: list[float], rec: Recommender, width: int):
    """The service's ranker bag of ``history`` (a repeat once, at its last position; the newest
    ``width`` known items) and those positions' ratings (NaN if unknown), left-padded."""
    last = {item: rating for item, rating in zip(history, ratings, strict=True) if item}
    bag = rec.retriever.encoder.known_only(distinct_history([h for h in history if h]))[-width:]
    pad = width - len(bag)
    return [""] * pad + bag, [np.nan] * pad + [last[i] if last[i] >= 0 else np.nan for i in bag]


def test_two_stage_savedmodel_equals_the_ranked_api(planted_ranked_artefact, outputs):
    rec = Recommender.load(planted_ranked_artefact)
    rec.num_candidates = 5
    _, got = outputs
    features = [{"age": 30, "gender": "F", "occupation": "student", "zip_prefix": "1"}, {}]
    assert got["two_stage"]["model_version"] == [rec.version] * 2
    for row, history in enumerate(HISTORIES):
        api = rec.recommend(history=[h for h in history if h], features=features[row], k=3)
        assert got["two_stage"]["item_ids"][row] == api.item_ids
        np.testing.assert_allclose(
            got["two_stage"]["scores"][row], [r.score for r in api], rtol=1e-4
        )


def test_ranker_savedmodel_equals_the_numpy_scorer(planted_ranked_artefact, outputs):
    request, got = outputs
    scorer = Recommender.load(planted_ranked_artefact).reranker.scorer
    assert isinstance(scorer, RankScorer)
    inputs = {k: np.array(v, dtype=object if isinstance(np.ravel(v)[0], str) else np.float32)
              for k, v in request["ranker"].items()}  # fmt: skip
    assert scorer.config.rated_bag and inputs["history_rating"].shape == (2, 2)
    for name in ("time_since_last", "user_mean", "history_rating"):
        inputs[name] = np.where(inputs[name] < 0, np.nan, inputs[name]).astype(np.float32)
    want = scorer(inputs)
    assert scorer.config.tower_score_weight == 0.5  # the served logit is the blend
    np.testing.assert_allclose(got["ranker"]["logit"], want["serving_logit"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["ranker"]["score"], np.exp(want["serving_logit"]), rtol=1e-4)
    np.testing.assert_allclose(got["ranker"]["rating"], want["rating"], rtol=1e-4)


def test_two_stage_savedmodel_counts_a_repeat_once_and_the_newest_max_history(
    planted_ranked_artefact, outputs
):
    rec = Recommender.load(planted_ranked_artefact)
    rec.num_candidates = 5
    assert rec.reranker.max_history == 3
    got = outputs[1]["two_stage:long"]
    for row, history in enumerate(LONG_HISTORIES):
        api = rec.recommend(history=[h for h in history if h], k=3)
        assert got["item_ids"][row] == api.item_ids
        np.testing.assert_allclose(got["scores"][row], [r.score for r in api], rtol=1e-4)


def test_ranker_savedmodel_counts_a_repeat_once_and_the_newest_max_history(
    planted_ranked_artefact, outputs
):
    request, got = outputs
    rec = Recommender.load(planted_ranked_artefact)
    reranker = rec.reranker
    reranker.clock = lambda: CLOCK
    stats = {"rating_mean": USER_MEAN, "last_timestamp": LAST_WATCH}
    scores = np.reshape(got["ranker:long"]["score"], (len(LONG_HISTORIES), len(CANDIDATES)))
    for row, history in enumerate(LONG_HISTORIES):
        distinct = distinct_history([h for h in history if h])
        ids, want = reranker.rerank(
            CANDIDATES, TOWER_SCORES, rec.retriever.encoder.known_only(distinct),
            {**stats, "rating_count": float(len(distinct))}, DEMOGRAPHICS, k=len(CANDIDATES),
        )  # fmt: skip
        served = dict(zip(CANDIDATES, scores[row], strict=True))
        np.testing.assert_allclose([served[i] for i in ids], want, rtol=1e-4)
    # the ratings follow their items: the rating head sees the service's bag and its ratings
    inputs = {k: np.array(v, dtype=object if isinstance(np.ravel(v)[0], str) else np.float32)
              for k, v in request["ranker:long"].items()}  # fmt: skip
    bags = [_served_bag(h, r, rec, reranker.max_history) for h, r in zip(
        inputs["history"], inputs["history_rating"], strict=True)]  # fmt: skip
    inputs["history"] = np.array([b for b, _ in bags], dtype=object)
    inputs["history_rating"] = np.array([r for _, r in bags], np.float32)
    assert inputs["history"][0].tolist() == ["", "B", "A"]
    assert inputs["history_rating"][3].tolist() == [3.0, 2.0, 5.0]  # C, D, A (its last rating)
    np.testing.assert_allclose(got["ranker:long"]["rating"], reranker.scorer(inputs)["rating"],
                               rtol=1e-4)  # fmt: skip


def test_two_stage_returns_k_items_when_k_exceeds_the_candidates_and_versions_are_kept(
    planted_ranked_artefact, tmp_path
):
    import shutil

    import tensorflow as tf

    base = tmp_path / "models"
    paths = export_ranking_savedmodels(planted_ranked_artefact, base, k=4, num_candidates=2)
    model = tf.saved_model.load(str(paths["two_stage"])).signatures["serving_default"]
    out = model(
        history=tf.constant([["A"]]), age=tf.constant([-1.0]), gender=tf.constant([""]),
        occupation=tf.constant([""]), zip_prefix=tf.constant([""]),
        user_count=tf.constant([1.0]), user_mean=tf.constant([-1.0]),
        time_since_last=tf.constant([-1.0]),
    )  # fmt: skip
    got = [b.decode() for b in out["item_ids"].numpy()[0]]
    assert len(got) == 4 and "" not in got and "A" not in got  # as the API: max(k, n) fetched
    (base / "ranker" / "1" / "mine.txt").write_text("kept")
    with pytest.raises(FileExistsError, match="already exists"):
        export_ranking_savedmodels(planted_ranked_artefact, base, k=4, num_candidates=2)
    assert (base / "ranker" / "1" / "mine.txt").read_text() == "kept"
    export_ranking_savedmodels(planted_ranked_artefact, base, k=4, num_candidates=2, overwrite=True)
    assert not (base / "ranker" / "1" / "mine.txt").exists()  # replaced whole, not mixed
    stale = tmp_path / "stale"
    shutil.copytree(planted_ranked_artefact, stale)
    config = json.loads((stale / "ranker" / "config.json").read_text())
    config["tower_version"] = "20200101T000000Z-00000000"
    (stale / "ranker" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="was trained for tower 20200101T000000Z-00000000"):
        export_ranking_savedmodels(stale, tmp_path / "other")
    bare = tmp_path / "bare"  # no index/ and no popularity column: built and 0, as the API does
    shutil.copytree(planted_ranked_artefact, bare)
    shutil.rmtree(bare / "index")
    items = pd.read_parquet(bare / "items.parquet").drop(columns="popularity")
    items.to_parquet(bare / "items.parquet", index=False)
    assert set(export_ranking_savedmodels(bare, tmp_path / "bare-models")) == {
        "ranker",
        "two_stage",
    }
