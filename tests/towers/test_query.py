import numpy as np
import pytest

import towers.artefact
from towers.artefact import SERVING_FILE, load_artefact, load_query_encoder, write_serving_arrays
from towers.features import query_inputs
from towers.query import QueryEncoder


def test_numpy_encoder_equals_the_keras_tower(planted_artefact):
    model = load_artefact(planted_artefact)
    assert model.use_tokens and model.demographic_vocabularies and model.config.recent_history
    inputs = query_inputs(
        [["A", "B"], [], ["not-an-item", "C"], ["E", "F", "G", "H", "A"]],
        max_history=model.config.max_history,
        demographics={
            "age": np.array([25.0, np.nan, 90.0, 31.0], np.float32),
            "gender": np.array(["F", "", "M", "other"], dtype=object),
            "occupation": np.array(["student", "artist", "", "student"], dtype=object),
            "zip_prefix": np.array(["1", "2", "zz", ""], dtype=object),
        },
        example_age=np.array([0.0, 0.5, 1.0, 0.1], np.float32),
    )
    encoder = QueryEncoder.from_model(model)
    np.testing.assert_allclose(encoder(inputs), model(inputs).numpy(), rtol=1e-5, atol=1e-6)
    queries = encoder.queries(inputs)
    assert queries.shape == (4, model.config.output_dim + 1)
    np.testing.assert_array_equal(queries[:, -1], 1.0)


def test_item_positions_follow_the_lookup_layer(planted_artefact):
    model = load_artefact(planted_artefact)
    encoder = QueryEncoder.from_model(model)
    history = np.array([["", "A", "zzz"]], dtype=object)
    np.testing.assert_array_equal(encoder.item_positions(history), model.item_lookup(history))
    assert encoder.knows("A") and not encoder.knows("zzz")


def test_split_known_and_known_tail(planted_artefact):
    encoder = QueryEncoder.from_model(load_artefact(planted_artefact))
    history = ["A", "zzz", "", "B", "A", "yyy", "C"]
    # Padding is in neither list; order is kept; repeats stay (histories arrive folded).
    assert encoder.split_known(history) == (["A", "B", "A", "C"], ["zzz", "yyy"])
    assert encoder.split_known([]) == ([], [])
    # All known (the set check's path), and all known but padding (the loop's).
    assert encoder.split_known(["C", "A", "C"]) == (["C", "A", "C"], [])
    assert encoder.split_known(["C", "", "A"]) == (["C", "A"], [])
    assert encoder.split_known(["C", 3]) == (["C"], [3])  # a non-text ID is not an item
    assert encoder.known_only(history) == encoder.split_known(history)[0]
    assert encoder.known_tail(history, 2) == ["A", "C"]
    assert encoder.known_tail(history, 3) == ["B", "A", "C"]
    assert encoder.known_tail(history, 10) == ["A", "B", "A", "C"]
    assert encoder.known_tail(history, 0) == []
    assert encoder.known_tail([3, "C"], 5) == ["C"]  # IDs read as text; 3 is not an item


def test_artefacts_serve_from_arrays_without_keras(planted_artefact, tmp_path, monkeypatch):
    model = load_artefact(planted_artefact)
    inputs = query_inputs([["A", "B"], []], max_history=model.config.max_history)
    want = model(inputs).numpy()
    monkeypatch.setattr(towers.artefact, "load_artefact", lambda _: pytest.fail("built with Keras"))
    encoder = load_query_encoder(planted_artefact)
    np.testing.assert_allclose(encoder(inputs), want, rtol=1e-5, atol=1e-6)
    assert encoder.knows("A") and encoder.max_history == model.config.max_history


def test_an_artefact_without_arrays_is_rebuilt_once_and_bad_arrays_are_named(
    planted_artefact, tmp_path
):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(planted_artefact, copy)
    (copy / SERVING_FILE).unlink()  # as written before the file existed
    inputs = query_inputs([["C"]], max_history=10)
    want = load_query_encoder(planted_artefact)(inputs)
    np.testing.assert_allclose(load_query_encoder(copy)(inputs), want, rtol=1e-6)
    write_serving_arrays(copy)
    np.testing.assert_array_equal(load_query_encoder(copy)(inputs), want)

    arrays = dict(np.load(copy / SERVING_FILE))
    arrays["history_embedding"] = arrays["history_embedding"][:-1]
    np.savez(copy / SERVING_FILE, **arrays)
    with pytest.raises(ValueError, match="history_embedding.*rows"):
        load_query_encoder(copy)
