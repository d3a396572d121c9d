import numpy as np
import pandas as pd
import pytest

from ranking.impressions import NUMERIC, RankingExamples
from ranking.model import RankerConfig
from ranking.pipeline import predict
from ranking.train import RankerOptions, load_ranker, save_ranker, train_ranker
from towers.data import empty_item_metadata

ITEMS = ["A", "B", "C", "D"]
SMALL = RankerConfig(hidden_units=(16, 8), rating_units=(8,), max_history=2, dropout=0.0)


def planted(n: int = 200) -> RankingExamples:
    """Users who watched A pick B over C although the generator ranks C first; users who
    watched D pick C over B."""
    rows = []
    for g in range(n):
        watched, liked = ("A", "B") if g % 2 == 0 else ("D", "C")
        for rank, item in enumerate(["C", "B"] if g % 2 == 0 else ["B", "C"], 1):
            rows.append((g, watched, item, rank, float(item == liked)))
    frame = pd.DataFrame(rows, columns=["group", "watched", "item", "rank", "label"])
    m = len(frame)
    numeric = {name: np.zeros(m) for name in NUMERIC}
    numeric["tower_rank"] = frame["rank"].to_numpy(np.float64)
    numeric["tower_score"] = -frame["rank"].to_numpy(np.float64)
    return RankingExamples(
        user_id=np.array([f"u{g}" for g in frame["group"]], dtype=object),
        item_id=frame["item"].to_numpy(dtype=object),
        history=np.stack([["", w] for w in frame["watched"]]).astype(object),
        numeric=numeric,
        label=frame["label"].to_numpy(np.float32),
        weight=np.where(frame["label"] > 0, 4.0, 1.0).astype(np.float32),
        rating=np.where(frame["label"] > 0, 4.0, np.nan).astype(np.float32),
        group=frame["group"].to_numpy(np.int64),
    )


@pytest.fixture(scope="module")
def trained():
    items = empty_item_metadata(ITEMS)
    ranker, metrics = train_ranker(
        planted(), ITEMS, items, SMALL, RankerOptions(epochs=40, batch_size=64, learning_rate=0.01)
    )
    return ranker, metrics


def test_the_ranker_recovers_a_planted_preference(trained):
    ranker, metrics = trained
    assert metrics["impression_rows"] == 400 and metrics["loss"][-1] < metrics["loss"][0]
    out = predict(ranker, planted(2))["logit"]  # group 0: [C, B] after A; group 1: [B, C] after D
    assert out[1] > out[0]  # B beats C after A
    assert out[3] > out[2]  # C beats B after D


def test_save_then_load_gives_equal_outputs(trained, tmp_path):
    ranker, metrics = trained
    loaded = load_ranker(save_ranker(ranker, tmp_path, metrics, "tower-v1", RankerOptions()))
    before, after = predict(ranker, planted(4)), predict(loaded, planted(4))
    np.testing.assert_allclose(before["logit"], after["logit"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(before["rating"], after["rating"], rtol=1e-5)
    assert loaded.tower_version == "tower-v1"
    with pytest.raises(FileNotFoundError, match="not a ranker artefact"):
        load_ranker(tmp_path / "nothing")


def test_the_serving_scorer_loads_from_arrays_without_keras(trained, tmp_path, monkeypatch):
    import ranking.train
    from ranking.train import load_rank_scorer, ranker_inputs

    ranker, metrics = trained
    directory = save_ranker(ranker, tmp_path / "r", metrics, "tower-v1", RankerOptions())
    monkeypatch.setattr(ranking.train, "load_ranker", lambda _: pytest.fail("built with Keras"))
    scorer, tower_version = load_rank_scorer(directory)
    assert tower_version == "tower-v1"
    ex = planted(3)
    got, want = scorer(ranker_inputs(ex)), predict(ranker, ex)
    np.testing.assert_allclose(got["logit"], want["logit"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["rating"], want["rating"], rtol=1e-4, atol=1e-5)

    (directory / "serving.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="serving.npz"):
        load_rank_scorer(directory)


def test_unknown_items_embed_to_zero_and_ratings_stay_in_range(trained):
    ranker, _ = trained
    ex = planted(1)  # two rows; make them identical except for how the IDs are missing
    for values in (*ex.numeric.values(), ex.history):
        values[1] = values[0]
    ex.item_id[:] = ["never-seen", ""]  # unknown ID vs the padding ID
    ex.history[0] = ["never-seen", "also-unknown"]
    ex.history[1] = ["", ""]
    out = predict(ranker, ex)
    np.testing.assert_allclose(out["logit"][0], out["logit"][1], rtol=1e-6)
    assert not np.allclose(out["logit"][0], predict(ranker, planted(1))["logit"][0])
    assert ((out["rating"] > 0.5) & (out["rating"] < 5.5)).all()


def test_numpy_scorer_equals_the_keras_ranker(trained):
    from ranking.scorer import RankScorer
    from ranking.train import ranker_inputs

    ranker, _ = trained
    ex = planted(6)
    ex.item_id[3] = "never-seen"
    ex.numeric["user_mean"][:] = np.linspace(1, 5, len(ex))
    ex.numeric["user_mean"][0] = np.nan
    want = predict(ranker, ex)
    got = RankScorer.from_model(ranker)(ranker_inputs(ex))
    np.testing.assert_allclose(got["logit"], want["logit"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["rating"], want["rating"], rtol=1e-4, atol=1e-5)
