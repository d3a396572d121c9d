"""The content projection: tokens from metadata, and a ridge fit checked on exact cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from towers.content import (
    ContentProjection,
    NoMetadataError,
    frame_tokens,
    metadata_tokens,
    token_vocabulary,
)

TOKENS = [["a"], ["b"], ["a", "b"], ["c", "a"], ["c"], ["b", "c"], ["rare"]]


def test_metadata_tokens_name_genres_decade_tags_and_title_words():
    assert metadata_tokens("The Matrix (1999)", ["Action", "Sci-Fi"], 1999, ["cyberpunk"]) == [
        "g:action", "g:sci-fi", "y:1990s", "t:cyberpunk", "w:matrix",
    ]  # fmt: skip
    assert metadata_tokens("Untitled", ["(no genres listed)"]) == ["w:untitled"]


def test_frame_tokens_reads_a_metadata_frame():
    items = pd.DataFrame(
        {"item_id": ["1", "2"], "title": ["Up (2009)", "Heat"], "year": [2009.0, np.nan],
         "genres": [["Animation"], []]}
    )  # fmt: skip
    assert frame_tokens(items, ["2", "1", "9"]) == [
        ["w:heat"],
        ["g:animation", "y:2000s", "w:up"],
        [],
    ]


def test_features_are_unit_norm_bags_of_known_tokens():
    fit = ContentProjection.fit(TOKENS[:6], np.zeros((6, 2)), l2=1.0)
    assert fit.vocabulary == ["a", "b", "c"]  # "rare" describes one item only
    x = fit.features([["a", "b"], ["c", "unknown"], []])
    np.testing.assert_allclose(x, [[2**-0.5, 2**-0.5, 0], [0, 0, 1], [0, 0, 0]], rtol=1e-6)


def test_the_vocabulary_keeps_the_most_frequent_tokens_that_describe_enough_items():
    # a: 4 items (listed twice for the last one, which counts once), b: 3, c: 3, rare: 1.
    tokens = [*TOKENS, ["a", "a"]]
    assert token_vocabulary(tokens) == ["a", "b", "c"]
    assert token_vocabulary(tokens, min_count=1) == ["a", "b", "c", "rare"]
    # a first, then b and c (3 each) by name: the cut keeps a and b.
    assert token_vocabulary(tokens, max_features=2) == ["a", "b"]
    with pytest.raises(NoMetadataError, match="5 or more items"):
        token_vocabulary(tokens, min_count=5)


def test_ridge_recovers_an_exact_linear_map():
    rng = np.random.default_rng(0)
    weights, intercept = rng.normal(size=(3, 4)), rng.normal(size=4)
    probe = ContentProjection(["a", "b", "c"], weights, intercept, 0.0)
    targets = probe.predict(TOKENS[:6])
    fit = ContentProjection.fit(TOKENS[:6], targets, counts=np.arange(6), l2=1e-9)
    np.testing.assert_allclose(fit.predict(TOKENS[:6]), targets, atol=1e-4)
    # An item with no known token gets the intercept: here the exact one.
    np.testing.assert_allclose(fit.predict([["unknown"]])[0], intercept, atol=1e-4)


def test_a_grid_of_strengths_picks_one_and_the_projection_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    tokens = [list(rng.choice(list("abcdef"), size=2, replace=False)) for _ in range(60)]
    targets = rng.normal(size=(60, 3))
    fit = ContentProjection.fit(tokens, targets, l2=(0.1, 100.0))
    assert fit.l2 in (0.1, 100.0)
    fit.save(tmp_path)
    loaded = ContentProjection.load(tmp_path)
    assert loaded.vocabulary == fit.vocabulary and loaded.l2 == fit.l2
    np.testing.assert_array_equal(loaded.predict(tokens), fit.predict(tokens))


def test_fit_and_load_name_their_problems(tmp_path):
    with pytest.raises(ValueError, match="targets"):
        ContentProjection.fit(TOKENS, np.zeros((2, 2)))
    with pytest.raises(NoMetadataError, match="no metadata token"):
        ContentProjection.fit([["x"], ["y"]], np.zeros((2, 2)))
    with pytest.raises(FileNotFoundError, match="content.npz"):
        ContentProjection.load(tmp_path)


def test_predictions_are_stretched_to_the_learned_rows_spread():
    rng = np.random.default_rng(2)
    tokens = [list(rng.choice(list("abcdef"), size=2, replace=False)) for _ in range(80)]
    targets = rng.normal(size=(80, 3))  # unrelated to the tokens: the ridge shrinks hard
    counts = rng.integers(1, 50, size=80)
    fit = ContentProjection.fit(tokens, targets, counts=counts, l2=30.0)
    assert fit.spread > 1.5
    weight = np.log1p(counts)
    predicted = fit.predict(tokens)

    def spread(rows):  # weighted mean squared distance from the weighted mean row
        return weight @ ((rows - fit.center) ** 2).sum(axis=1) / weight.sum()

    np.testing.assert_allclose(fit.center, weight @ targets / weight.sum(), rtol=1e-5)
    np.testing.assert_allclose(spread(predicted), spread(targets), rtol=1e-4)
    # Stretching keeps every user's order of the items.
    user = rng.normal(size=3)
    plain = ContentProjection(fit.vocabulary, fit.weights, fit.intercept, fit.l2)
    assert (np.argsort(predicted @ user) == np.argsort(plain.predict(tokens) @ user)).all()


def test_a_damaged_projection_file_is_named(tmp_path):
    from towers.content import CONTENT_FILE

    for payload in (b"", b"garbage bytes", b"PK\x03\x04truncated"):
        (tmp_path / CONTENT_FILE).write_bytes(payload)
        with pytest.raises(ValueError, match=f"{CONTENT_FILE} is damaged"):
            ContentProjection.load(tmp_path)


def test_fit_names_bad_counts_and_l2():
    tokens = [["g:a"], ["g:a"], ["g:b"], ["g:b"]]
    targets = np.arange(8.0).reshape(4, 2)
    for counts, message in (([1, 2], "counts must be 4"), ([0, 0, 0, 0], "all 0"),
                            ([1, np.nan, 1, 1], "counts must be 4")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            ContentProjection.fit(tokens, targets, counts, min_count=1)
    for l2 in ([], float("nan"), -1.0, "1"):
        with pytest.raises(ValueError, match="l2 must be a number >= 0"):
            ContentProjection.fit(tokens, targets, l2=l2, min_count=1)
