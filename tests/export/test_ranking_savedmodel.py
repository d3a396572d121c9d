"""The ranker and two-stage SavedModels, loaded without the project, equal the ranked API."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from export.ranking_savedmodel import export_ranking_savedmodels
from ranking.scorer import RankScorer
from serving.api import Recommender

HISTORIES = [["A", "", ""], ["C", "zzz", "D"]]
LOADER = textwrap.dedent(
    """
    import json, sys
    for name in ("towers", "ranking", "serving", "export"):
        sys.modules[name] = None
    import tensorflow as tf
    base, request = sys.argv[1], json.load(open(sys.argv[2]))
    out = {}
    for name in ("ranker", "two_stage"):
        leaf = lambda v: leaf(v[0]) if isinstance(v, list) else v
        feed = {k: tf.constant(v, tf.string if isinstance(leaf(v), str) else tf.float32)
                for k, v in request[name].items()}
        result = tf.saved_model.load(f"{base}/{name}/1").signatures["serving_default"](**feed)
        out[name] = {k: v.numpy().tolist() for k, v in result.items()}
        out[name]["model_version"] = [b.decode() for b in out[name]["model_version"]]
        if "item_ids" in out[name]:
            out[name]["item_ids"] = [[b.decode() for b in row] for row in out[name]["item_ids"]]
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
    (base / "request.json").write_text(json.dumps(request))
    (base / "load.py").write_text(LOADER)
    done = subprocess.run(
        [sys.executable, str(base / "load.py"), str(base), str(base / "request.json")],
        cwd=base, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return request, json.loads(done.stdout.strip().splitlines()[-1])


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
