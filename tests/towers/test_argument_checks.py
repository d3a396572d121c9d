"""Bad arguments to the towers' public functions are named, not passed on to numpy, Keras or
ScaNN (or, worse, answered wrongly)."""

import numpy as np
import pandas as pd
import pytest

from tests.towers.test_model import SMALL, planted_log
from towers.coldstart import cold_item_metrics, cold_user_split, held_out, onboarding_order
from towers.content import ContentProjection
from towers.data import Dataset, empty_item_metadata
from towers.index import ItemIndex
from towers.retrieval import Retriever
from towers.train import TrainOptions, train_tower

TOKENS = [["genre:comedy"], ["genre:comedy"], ["genre:drama"], ["genre:drama"]]


def test_the_index_stores_and_finds_ids_as_text():
    index = ItemIndex.build([7, "b"], np.eye(2, dtype=np.float32))
    assert 7 in index and "7" in index  # stored as "7", found either way
    np.testing.assert_array_equal(index.vector(7), [1, 0])
    np.testing.assert_array_equal(index.vectors([7, "b"]), np.eye(2))
    with pytest.raises(TypeError, match="not one string"):
        index.vectors("7b")
    with pytest.raises(ValueError, match="empty ID"):  # search pads short answers with ""
        index.upsert([""], np.ones((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"d >= 1"):
        ItemIndex.build(["a"], np.zeros((1, 0), np.float32))


def test_a_string_exclude_is_refused_not_read_as_letters(planted_artefact):
    retriever = Retriever.from_artefact(planted_artefact)
    queries = np.zeros((1, retriever.index.dim), np.float32)
    with pytest.raises(TypeError, match="exclude must hold one set"):
        retriever.search(queries, 3, ["ABC"])


def test_the_content_projection_refuses_what_it_cannot_fit():
    targets = np.arange(8, dtype=float).reshape(4, 2)
    bad = targets.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values in row\(s\) \[2\]"):
        ContentProjection.fit(TOKENS, bad, l2=1.0)
    for name in ("min_count", "max_features"):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
            ContentProjection.fit(TOKENS, targets, l2=1.0, **{name: 0})
    projection = ContentProjection.fit(TOKENS, targets, l2=np.float32(1.0))  # numpy scalar
    assert projection.predict([["genre:comedy"]]).shape == (1, 2)
    with pytest.raises(ValueError, match="not one string"):
        projection.predict("genre:comedy")


def test_training_needs_two_items_and_a_usable_validation():
    one_item = pd.DataFrame({"user_id": ["u", "v"], "item_id": ["A", "A"], "rating": [4.0, 3.0],
                             "timestamp": [1, 2]})  # fmt: skip
    data = Dataset("one", one_item, empty_item_metadata(["A"]), None, "x")
    with pytest.raises(ValueError, match="1 distinct item"):
        train_tower(data, SMALL, TrainOptions(epochs=1, verbose=0))
    log = planted_log()
    unknown = log.interactions.assign(item_id="Z" + log.interactions["item_id"])
    with pytest.raises(ValueError, match="validation has no next-watch example"):
        train_tower(log, SMALL, TrainOptions(epochs=1, verbose=0),
                    validation=log.with_interactions(unknown))  # fmt: skip


def test_cold_start_helpers_name_their_arguments():
    vectors, popularity = np.eye(3), np.array([3.0, 2.0, 1.0])
    assert onboarding_order(vectors, popularity, n=2).tolist() == [0, 1]
    for kwargs, message in (({"n": 2.5}, "n must be"), ({"n": True}, "n must be"),
                            ({"n": 2, "pool": -3}, "pool must be")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            onboarding_order(vectors, popularity, **kwargs)
    with pytest.raises(ValueError, match="finite"):
        onboarding_order(np.full((3, 3), np.nan), popularity, n=1)
    with pytest.raises(ValueError, match="num_items >= 1"):
        onboarding_order(np.zeros((0, 3)), np.zeros(0), n=1)
    split = cold_user_split(planted_log().interactions)
    with pytest.raises(ValueError, match="k must be"):
        split.first_k(1.5)
    with pytest.raises(ValueError, match="seed must be"):
        held_out(["a", "b"], 0.5, seed=-1)
    with pytest.raises(ValueError, match="must be \\(n_users, n_cold_items\\) alike"):
        cold_item_metrics(np.ones(3), np.ones(3, bool))
