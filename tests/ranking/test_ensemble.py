"""Rankers served as one (``RankerConfig.members``): each member is the ranker its seed trains
alone, and every consumer serves their mean."""

from dataclasses import replace

import numpy as np
import pytest

from ranking.artefact import load_rank_scorer, load_ranker, ranker_settings, save_ranker
from ranking.ensemble import RankerEnsemble
from ranking.model import RankerConfig
from ranking.pipeline import predict
from ranking.scorer import RankScorer
from ranking.train import RankerOptions, ranker_inputs, train_ranker
from tests.ranking.test_ranker import ITEMS, genred_items, planted
from towers.artefact import SERVING_FILE, load_arrays

CONFIG = RankerConfig(
    hidden_units=(8,), rating_units=(8,), max_history=2, tower_score_weight=0.5, members=2
)
OPTIONS = RankerOptions(epochs=2, batch_size=50, seed=3)


@pytest.fixture(scope="module")
def ensemble():
    return train_ranker(planted(), ITEMS, genred_items(), CONFIG, OPTIONS)


def test_each_member_is_the_ranker_its_seed_trains_alone_and_the_ensemble_serves_their_mean(
    ensemble,
):
    ranker, metrics = ensemble
    assert isinstance(ranker, RankerEnsemble) and len(ranker.members) == 2
    assert ranker.config == CONFIG
    probe = planted(4)
    alone = [
        predict(train_ranker(planted(), ITEMS, genred_items(), replace(CONFIG, members=1),
                             replace(OPTIONS, seed=seed))[0], probe)
        for seed in (3, 4)
    ]  # fmt: skip
    for member, want in zip(ranker.members, alone, strict=True):
        np.testing.assert_allclose(predict(member, probe)["logit"], want["logit"], rtol=1e-5)
    assert not np.allclose(alone[0]["logit"], alone[1]["logit"])
    out = predict(ranker, probe)
    mean_logit = (alone[0]["logit"] + alone[1]["logit"]) / 2
    np.testing.assert_allclose(out["logit"], mean_logit, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        out["rating"], (alone[0]["rating"] + alone[1]["rating"]) / 2, rtol=1e-5
    )
    # The generator's score is added once, to the mean: 0.5 * tower_score (= -rank).
    np.testing.assert_allclose(
        out["serving_logit"], mean_logit - 0.5 * probe.numeric["tower_rank"], rtol=1e-5, atol=1e-6
    )
    losses = np.array(metrics["member_loss"])
    assert losses.shape == (2, 2)
    np.testing.assert_allclose(metrics["loss"], losses.mean(axis=0), atol=1e-5)


def test_an_ensemble_saves_loads_and_serves_from_its_arrays(ensemble, tmp_path):
    ranker, metrics = ensemble
    probe = planted(6)
    probe.item_id[3] = "never-seen"
    probe.history[2] = ["never-seen", "D"]
    probe.numeric["user_mean"][:] = np.linspace(1, 5, len(probe))
    want = predict(ranker, probe)
    scorer = RankScorer.from_model(ranker)
    assert {"member1/item_embedding", "member1/rank_0/kernel"} <= set(scorer.arrays)
    assert "member1/genres" not in scorer.arrays  # the members' static tables are shared
    for name in ("logit", "serving_logit", "rating"):
        np.testing.assert_allclose(scorer(ranker_inputs(probe))[name], want[name], rtol=1e-4,
                                   atol=1e-5, err_msg=name)  # fmt: skip
    directory = save_ranker(ranker, tmp_path / "r", metrics, "tower-v1", OPTIONS)
    assert ranker_settings(directory) == (CONFIG, OPTIONS)
    loaded = load_ranker(directory)
    assert isinstance(loaded, RankerEnsemble) and loaded.tower_version == "tower-v1"
    np.testing.assert_allclose(predict(loaded, probe)["logit"], want["logit"], rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    saved, _ = load_rank_scorer(directory)
    inputs = ranker_inputs(probe)
    np.testing.assert_allclose(saved(inputs)["serving_logit"], want["serving_logit"], rtol=1e-4,
                               atol=1e-5)  # fmt: skip
    # Serving passes one history row for all of a user's candidates: the same logits.
    rows = {**inputs, "history": inputs["history"][:1]}
    full = {**inputs, "history": np.repeat(inputs["history"][:1], len(probe), axis=0)}
    np.testing.assert_allclose(saved(rows)["logit"], saved(full)["logit"], rtol=1e-6)
    # A member's arrays missing from serving.npz are named.
    arrays = load_arrays(directory / SERVING_FILE)
    del arrays["member1/rank_0/kernel"]
    with pytest.raises(ValueError, match="member1/rank_0/kernel"):
        RankScorer(CONFIG, ITEMS, arrays, loaded.normalizers, {})


def test_members_must_be_at_least_one():
    with pytest.raises(ValueError, match="members must be >= 1, got 0"):
        RankerConfig(members=0)
    with pytest.raises(ValueError, match="members is empty"):
        RankerEnsemble([])
