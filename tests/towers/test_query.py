import numpy as np

from towers.features import query_inputs
from towers.query import QueryEncoder
from towers.train import load_artefact


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
    encoder = QueryEncoder(model)
    np.testing.assert_allclose(encoder(inputs), model(inputs).numpy(), rtol=1e-5, atol=1e-6)
    queries = encoder.queries(inputs)
    assert queries.shape == (4, model.config.output_dim + 1)
    np.testing.assert_array_equal(queries[:, -1], 1.0)


def test_item_positions_follow_the_lookup_layer(planted_artefact):
    model = load_artefact(planted_artefact)
    encoder = QueryEncoder(model)
    history = np.array([["", "A", "zzz"]], dtype=object)
    np.testing.assert_array_equal(encoder.item_positions(history), model.item_lookup(history))
    assert encoder.knows("A") and not encoder.knows("zzz")
