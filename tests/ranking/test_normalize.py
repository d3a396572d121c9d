import numpy as np
import pytest

from ranking.model import tf_cdf
from ranking.normalize import ONE_BELOW, QuantileNormalizer


def test_cdf_on_hand_computed_values():
    cdf = QuantileNormalizer.fit(np.array([0.0, 1, 2, 3, 4]), num_quantiles=4)
    np.testing.assert_allclose(cdf.knots, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(cdf.levels, [0, 0.25, 0.5, 0.75, 1])
    got = cdf(np.array([-1.0, 0, 2, 2.5, 4, 10, np.nan]))
    np.testing.assert_allclose(got, [0, 0, 0.5, 0.625, ONE_BELOW, ONE_BELOW, 0], rtol=1e-6)
    np.testing.assert_allclose(cdf.expand(np.array([2.5]))[0], [0.625, 0.390625, 0.625**0.5])


def test_ties_take_the_middle_of_their_probabilities():
    # Quantiles at 0, .25, .5, .75, 1 of [1, 1, 1, 1, 9] are 1, 1, 1, 1, 9.
    cdf = QuantileNormalizer.fit(np.array([1.0, 1, 1, 1, 9]), num_quantiles=4)
    np.testing.assert_allclose(cdf.knots, [1, 9])
    np.testing.assert_allclose(cdf.levels, [0.375, 1.0])
    np.testing.assert_allclose(cdf(np.array([1.0, 5.0])), [0.375, 0.6875])


def test_constant_feature_and_bad_input():
    cdf = QuantileNormalizer.fit(np.array([3.0, 3.0]))
    got = cdf(np.array([2.0, 3.0, 4.0, np.nan]))
    np.testing.assert_allclose(got, [0, 0.5, ONE_BELOW, 0], rtol=1e-6)
    with pytest.raises(ValueError, match="no finite entries"):
        QuantileNormalizer.fit(np.array([np.nan]))
    with pytest.raises(ValueError, match="num_quantiles"):
        QuantileNormalizer.fit(np.array([1.0]), num_quantiles=0)


def test_tensorflow_cdf_equals_numpy():
    rng = np.random.default_rng(0)
    values = np.round(rng.exponential(3.0, 500))  # ties, as in counts
    x = np.concatenate([rng.uniform(-5, 30, 200), [np.nan, values.min(), values.max()]])
    for cdf in (QuantileNormalizer.fit(values, 50), QuantileNormalizer.fit(np.array([2.0]))):
        np.testing.assert_allclose(tf_cdf(x, cdf).numpy(), cdf(x), atol=1e-6)
    back = QuantileNormalizer.from_dict(QuantileNormalizer.fit(values).to_dict())
    np.testing.assert_allclose(back(x), QuantileNormalizer.fit(values)(x))


def test_tensorflow_cdf_keeps_knots_that_float32_cannot_tell_apart():
    # Epoch seconds: float32 steps by 64 here, so these knots would collapse into one.
    cdf = QuantileNormalizer(np.array([1.7e9, 1.7e9 + 10, 1.7e9 + 20]), np.array([0.0, 0.5, 1.0]))
    x = np.array([1.7e9 + 5, 1.7e9 + 15])
    np.testing.assert_allclose(cdf(x), [0.25, 0.75], atol=1e-6)
    np.testing.assert_allclose(tf_cdf(x, cdf).numpy(), [0.25, 0.75], atol=1e-6)
