import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ranking.artefact import load_ranker, ranker_settings, save_ranker
from ranking.impressions import NUMERIC, RankingExamples
from ranking.model import RankerConfig
from ranking.pipeline import predict
from ranking.scorer import USER_LEVEL
from ranking.train import RankerOptions, train_ranker
from towers.data import empty_item_metadata
from towers.features import DEMOGRAPHIC_COLUMNS

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


def test_a_saved_ranker_gives_back_its_settings_for_a_retrain(trained, tmp_path):
    ranker, metrics = trained
    options = RankerOptions(epochs=3, schedule="cosine", label_horizon=30)
    directory = save_ranker(ranker, tmp_path / "r", metrics, "tower-v1", options)
    assert ranker_settings(directory) == (ranker.config, options)
    # An artefact saved before an option existed gets that option's default.
    meta = json.loads((directory / "config.json").read_text())
    del meta["options"]["label_horizon"]
    (directory / "config.json").write_text(json.dumps(meta))
    assert ranker_settings(directory)[1].label_horizon == 1


def test_the_serving_scorer_loads_from_arrays_without_keras(trained, tmp_path, monkeypatch):
    import ranking.artefact
    from ranking.artefact import load_rank_scorer
    from ranking.train import ranker_inputs

    ranker, metrics = trained
    directory = save_ranker(ranker, tmp_path / "r", metrics, "tower-v1", RankerOptions())
    monkeypatch.setattr(ranking.artefact, "load_ranker", lambda _: pytest.fail("built with Keras"))
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


def rated_taste(n: int = 100) -> RankingExamples:
    """Both kinds of user watched A and D (user mean 3); they differ only in how they rated them.
    Kind 0 rated A 5 and D 1, and rates B 5 and C 1; kind 1 rated A 1 and D 5, and the reverse."""
    rows = []
    for g in range(n):
        kind = g % 2
        for item, value in (("B", 5.0 if kind == 0 else 1.0), ("C", 1.0 if kind == 0 else 5.0)):
            rows.append((f"u{g}", item, value, (5.0, 1.0) if kind == 0 else (1.0, 5.0)))
    m = len(rows)
    numeric = {name: np.full(m, np.nan) for name in NUMERIC}
    numeric["user_count"][:], numeric["user_mean"][:] = 2.0, 3.0
    return RankingExamples(
        user_id=np.array([r[0] for r in rows], dtype=object),
        item_id=np.array([r[1] for r in rows], dtype=object),
        history=np.array([["A", "D"]] * m, dtype=object),
        numeric=numeric,
        label=np.full(m, np.nan, np.float32),
        weight=np.ones(m, np.float32),
        rating=np.array([r[2] for r in rows], np.float32),
        group=np.full(m, -1, np.int64),
        history_rating=np.array([r[3] for r in rows], np.float32),
    )


@pytest.mark.parametrize("rated_bag", [False, True])
def test_only_the_rated_bag_tells_users_apart_by_their_ratings(rated_bag):
    config = RankerConfig(hidden_units=(8,), rating_units=(16,), max_history=2, dropout=0.0,
                          rated_bag=rated_bag)  # fmt: skip
    options = RankerOptions(epochs=60, batch_size=50, learning_rate=0.02, schedule="cosine")
    ranker, _ = train_ranker(rated_taste(), ITEMS, empty_item_metadata(ITEMS), config, options)
    # Rows 0..3: kind 0 on B, kind 0 on C, kind 1 on B, kind 1 on C.
    pred = predict(ranker, rated_taste(2))["rating"]
    if rated_bag:  # truth 5, 1, 1, 5
        assert pred[0] > 4.0 and pred[3] > 4.0 and pred[1] < 2.0 and pred[2] < 2.0
    else:  # the same inputs without ratings: each item gets one prediction for both kinds
        assert pred[0] == pytest.approx(pred[2]) and pred[1] == pytest.approx(pred[3])


def test_the_numpy_scorer_equals_the_keras_ranker_with_a_rated_bag():
    from ranking.scorer import RankScorer
    from ranking.train import ranker_inputs

    config = RankerConfig(hidden_units=(8,), rating_units=(8,), max_history=2, rated_bag=True)
    ranker, _ = train_ranker(rated_taste(), ITEMS, empty_item_metadata(ITEMS), config,
                             RankerOptions(epochs=2, batch_size=50))  # fmt: skip
    ex = rated_taste(4)
    ex.history_rating[0, 0] = np.nan  # a watch with no rating
    ex.history[1, 1] = "never-seen"  # its rating cannot count
    ex.history_rating[2] = np.nan
    want = predict(ranker, ex)
    scorer = RankScorer.from_model(ranker)
    got = scorer(ranker_inputs(ex))
    np.testing.assert_allclose(got["rating"], want["rating"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["logit"], want["logit"], rtol=1e-4, atol=1e-5)
    # Without ratings: as if no history item had one.
    inputs = ranker_inputs(ex)
    del inputs["history_rating"]
    ex.history_rating[:] = np.nan
    np.testing.assert_allclose(scorer(inputs)["rating"], predict(ranker, ex)["rating"], rtol=1e-4)


def test_a_tower_score_weight_adds_the_generator_score_to_the_served_logit(trained, tmp_path):
    from ranking.artefact import load_rank_scorer
    from ranking.train import ranker_inputs

    ranker, metrics = trained
    directory = save_ranker(ranker, tmp_path / "r", metrics, "tower-v1", RankerOptions())
    meta = json.loads((directory / "config.json").read_text())
    meta["ranker"]["tower_score_weight"] = 0.5
    (directory / "config.json").write_text(json.dumps(meta))
    ex = planted(2)  # tower scores -1, -2, -1, -2
    plain, blended = predict(ranker, ex), predict(load_ranker(directory), ex)
    np.testing.assert_array_equal(plain["serving_logit"], plain["logit"])
    np.testing.assert_allclose(blended["logit"], plain["logit"], rtol=1e-6)
    np.testing.assert_allclose(
        blended["serving_logit"], plain["logit"] + 0.5 * np.array([-1, -2, -1, -2]), rtol=1e-5
    )
    scorer, _ = load_rank_scorer(directory)
    got = scorer(ranker_inputs(ex), rating=False)
    np.testing.assert_allclose(got["serving_logit"], blended["serving_logit"], rtol=1e-4)
    assert ranker_settings(directory)[0].tower_score_weight == 0.5


def test_bad_ranker_settings_name_the_setting():
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tower_score_weight"):
            RankerConfig(tower_score_weight=bad)
    with pytest.raises(ValueError, match="label_horizon"):
        RankerOptions(label_horizon=0)
    with pytest.raises(ValueError, match="schedule"):
        RankerOptions(schedule="linear")


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: RankerConfig(max_history=0), "max_history"),
        (lambda: RankerConfig(dropout=1.5), "dropout"),
        (lambda: RankerConfig(num_quantiles=0), "num_quantiles"),
        (lambda: RankerConfig(rating_weight=float("nan")), "rating_weight"),
        (lambda: RankerConfig(hidden_units=(8, 0)), "hidden_units"),
        (lambda: RankerOptions(learning_rate=float("nan")), "learning_rate"),
        (lambda: RankerOptions(learning_rate=-1.0), "learning_rate"),
        (lambda: RankerOptions(epochs=0), "epochs"),
        (lambda: RankerOptions(batch_size=0), "batch_size"),
        (lambda: RankerOptions(weight_decay=float("inf")), "weight_decay"),
    ],
)
def test_bad_ranker_settings_are_refused_by_name(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_a_failed_save_keeps_the_previous_ranker_whole(trained, tmp_path, monkeypatch):
    import ranking.artefact as ranking_artefact

    ranker, metrics = trained
    directory = save_ranker(ranker, tmp_path / "r", metrics, "tower-v1", RankerOptions())
    before = {p.name: p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}

    def dies(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ranking_artefact, "save_arrays", dies)
    with pytest.raises(OSError, match="disk full"):
        save_ranker(ranker, directory, metrics, "tower-v2", RankerOptions())
    after = {p.name: p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "log.csv").write_text("x")
    with pytest.raises(FileExistsError, match="is not a ranker"):
        save_ranker(ranker, tmp_path / "data", metrics, "tower-v1", RankerOptions())
    assert (tmp_path / "data" / "log.csv").read_text() == "x"


def test_genre_profile_and_affinity_on_a_hand_computed_case():
    from ranking.model import genre_affinity, genre_profile, tnp

    # Genres (x, y, z). History: an x film, an x+y film, and a padded slot (its genres ignored).
    history_genres = np.array([[[1, 0, 0], [1, 1, 0], [0, 0, 1]]] * 3, np.float32)
    known = np.array([[1, 1, 0]] * 3, np.float32)
    candidates = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0]], np.float32)
    profile = genre_profile(history_genres, known)
    np.testing.assert_allclose(profile, [[1.0, 0.5, 0.0]] * 3)  # both films x, one of two y
    assert genre_profile(history_genres, 0 * known).tolist() == [[0, 0, 0]] * 3
    got = genre_affinity(profile, candidates)
    np.testing.assert_allclose(got[:, :3], profile)
    np.testing.assert_allclose(got[:, 3:6], [[1.0, 0.5, 0.0], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(got[:, 6], [0.75, 0.0, 0.0])  # (1 + 0.5) / 2 genres; z; none
    in_tf = genre_affinity(genre_profile(history_genres, known, tnp), candidates, tnp)
    np.testing.assert_allclose(in_tf.numpy(), got, rtol=1e-6)


def genred_items() -> pd.DataFrame:
    """Metadata of ``ITEMS`` with genres (three in all) and years."""
    return pd.DataFrame({
        "item_id": ITEMS, "title": ITEMS, "year": [1990.0, np.nan, 2000.0, 2010.0],
        "genres": [["Drama"], ["Drama", "War"], ["Comedy"], ["Comedy", "Drama"]],
        "tags": [[]] * 4,
    })  # fmt: skip


def test_keras_numpy_and_saved_rankers_agree_with_user_genres(tmp_path, monkeypatch):
    from ranking import numpy_net as scorer_module
    from ranking.artefact import load_rank_scorer
    from ranking.scorer import RankScorer
    from ranking.train import ranker_inputs

    items = genred_items()
    config = RankerConfig(hidden_units=(8,), rating_units=(8,), max_history=2, user_genres=True)
    ranker, metrics = train_ranker(
        planted(), ITEMS, items, config, RankerOptions(epochs=2, batch_size=50)
    )
    probe = planted(6)
    probe.history[2] = ["never-seen", "D"]
    probe.history[4] = ["", ""]
    want = predict(ranker, probe)
    scorer = RankScorer.from_model(ranker)
    got = scorer(ranker_inputs(probe))
    np.testing.assert_allclose(got["logit"], want["logit"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["rating"], want["rating"], rtol=1e-4, atol=1e-5)
    # Serving: one history row shared by every candidate gives the same logits.
    one = planted(2)
    one.history[:] = ["A", "D"]
    inputs = ranker_inputs(one)
    shared = {**inputs, "history": inputs["history"][:1]}
    np.testing.assert_allclose(scorer(shared)["logit"], scorer(inputs)["logit"], rtol=1e-6)
    # Such a request's per-user features (here a count, a time and an unknown mean rating, the
    # same on every row) enter the first layer once, as one row; the logits are still Keras'.
    one.numeric["user_count"][:], one.numeric["time_since_last"][:] = 7.0, 30.0
    one.numeric["user_mean"][:] = np.nan
    inputs = ranker_inputs(one)
    fresh = RankScorer.from_model(ranker)
    got = fresh({**inputs, "history": inputs["history"][:1]})
    assert fresh._members[0].split.item_table is not None  # the one-row path ran
    one_row = {"history": inputs["history"][:1], "item_popularity": inputs["item_popularity"][:1]}
    np.testing.assert_allclose(fresh({**inputs, **one_row})["logit"], got["logit"], rtol=1e-6)
    # The service vouches for one user (one_user=True) and gives each per-user input one row.
    per_user = {k: v[:1] for k, v in inputs.items() if k in (*USER_LEVEL, *DEMOGRAPHIC_COLUMNS)}
    vouched = fresh({**inputs, **one_row, **per_user}, one_user=True)
    np.testing.assert_allclose(vouched["logit"], got["logit"], rtol=1e-6)
    np.testing.assert_allclose(vouched["rating"], got["rating"], rtol=1e-6)
    keras_out = predict(ranker, one)
    np.testing.assert_allclose(got["logit"], keras_out["logit"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["rating"], keras_out["rating"], rtol=1e-4, atol=1e-5)
    # A catalogue too big for the item table multiplies the item features per request instead.
    monkeypatch.setattr(scorer_module, "MAX_ITEM_TABLE", 0)
    fresh = RankScorer.from_model(ranker)
    got = fresh({**inputs, "history": inputs["history"][:1]}, rating=False)
    assert fresh._members[0].split.item_table is None
    np.testing.assert_allclose(got["logit"], keras_out["logit"], rtol=1e-4, atol=1e-5)
    one.numeric["user_count"][0] = 8.0  # no longer one user's: every row is multiplied
    inputs = ranker_inputs(one)
    fresh = RankScorer.from_model(ranker)
    got = fresh({**inputs, "history": inputs["history"][:1]})
    assert fresh._members[0].split is None
    np.testing.assert_allclose(got["logit"], predict(ranker, one)["logit"], rtol=1e-4, atol=1e-5)
    directory = save_ranker(ranker, tmp_path / "r", metrics, "tower-v1", RankerOptions())
    assert ranker_settings(directory)[0].user_genres is True
    np.testing.assert_allclose(predict(load_ranker(directory), probe)["logit"], want["logit"],
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    saved, _ = load_rank_scorer(directory)
    np.testing.assert_allclose(saved(ranker_inputs(probe))["logit"], want["logit"], rtol=1e-4,
                               atol=1e-5)  # fmt: skip
    # The feature changes what the ranking head sees: without it the layer is narrower.
    plain, _ = train_ranker(planted(), ITEMS, items, replace(config, user_genres=False),
                            RankerOptions(epochs=1, batch_size=50))  # fmt: skip
    width = ranker.rank_tower[0].kernel.shape[0] - plain.rank_tower[0].kernel.shape[0]
    assert width == 2 * 3 + 1  # profile and product over 3 genres, and the affinity


def test_a_ranker_saved_before_user_genres_loads_without_them(tmp_path):
    ranker, metrics = train_ranker(planted(), ITEMS, empty_item_metadata(ITEMS),
                                   replace(SMALL, user_genres=False),
                                   RankerOptions(epochs=1, batch_size=64))  # fmt: skip
    directory = save_ranker(ranker, tmp_path / "r", metrics, "tower-v1", RankerOptions())
    meta = json.loads((directory / "config.json").read_text())
    del meta["ranker"]["user_genres"]
    (directory / "config.json").write_text(json.dumps(meta))
    assert ranker_settings(directory)[0].user_genres is False
    np.testing.assert_allclose(predict(load_ranker(directory), planted(2))["logit"],
                               predict(ranker, planted(2))["logit"], rtol=1e-5)  # fmt: skip


def test_user_genres_feed_only_the_ranking_head():
    """Trained on rating rows alone (no ranking labels), rankers with and without the genre
    profile predict the same ratings: the feature reaches the ranking head only."""
    items = genred_items()
    config = RankerConfig(hidden_units=(8,), rating_units=(8,), max_history=2)
    options = RankerOptions(epochs=3, batch_size=50, seed=3)
    with_genres, _ = train_ranker(rated_taste(40), ITEMS, items, config, options)
    without, _ = train_ranker(rated_taste(40), ITEMS, items, replace(config, user_genres=False),
                              options)  # fmt: skip
    probe = rated_taste(4)
    np.testing.assert_allclose(predict(with_genres, probe)["rating"],
                               predict(without, probe)["rating"], rtol=1e-6)  # fmt: skip
    assert not np.allclose(predict(with_genres, probe)["rating"], 3.0)  # it did learn


def test_a_tower_score_offset_puts_the_served_logit_in_the_loss():
    from ranking.train import _Trainer

    # Weighted logistic loss on hand-made outputs: label 1 (weight 2) and label 0 (weight 1),
    # then a rating row (no label, no generator score: a NaN served logit), rated 4, predicted 3.
    out = {
        "logit": np.array([0.0, 1.0, 0.5], np.float32),
        "serving_logit": np.array([2.0, -1.0, np.nan], np.float32),
        "rating": np.array([3.0, 3.0, 3.0], np.float32),
    }
    targets = {
        "label": np.array([1.0, 0.0, np.nan], np.float32),
        "weight": np.array([2.0, 1.0, 1.0], np.float32),
        "rating": np.array([np.nan, np.nan, 4.0], np.float32),
    }

    def loss(config: RankerConfig) -> float:
        trainer = SimpleNamespace(ranker=SimpleNamespace(config=config))  # all the loss reads
        return float(_Trainer._loss(trainer, out, targets))

    rating = (3.0 - 4.0) ** 2  # rating_weight 1
    head_alone = (2 * np.log(2.0) + np.log1p(np.e)) / 3 + rating  # logits 0 and 1
    offset = (2 * np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))) / 3 + rating  # 2 and -1
    assert loss(replace(SMALL, tower_score_weight=1.0)) == pytest.approx(head_alone, rel=1e-6)
    offset_config = replace(SMALL, tower_score_weight=1.0, tower_score_offset=True)
    assert loss(offset_config) == pytest.approx(offset, rel=1e-6)
