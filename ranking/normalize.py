"""Quantile normalisation of continuous features (Covington et al. 2016, Sec. 4.3).

"Proper normalization of continuous features was critical for convergence": each feature ``x``
is mapped to ``x̃ in [0, 1)`` by its cumulative distribution over the training data, and the
network gets ``x̃``, ``x̃²`` and ``√x̃`` so it can form super- and sub-linear functions easily.

The CDF is stored as ``Q + 1`` quantiles of the training values; between two quantiles it is
linear, so ``F`` is continuous and ties (common in counts) take the middle of their range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The largest normalised value: the CDF maps into [0, 1).
ONE_BELOW = 1.0 - 1e-6


@dataclass(frozen=True)
class QuantileNormalizer:
    """A fitted empirical CDF.

    Attributes
    ----------
    knots : numpy.ndarray of float64
        Strictly increasing quantile values.
    levels : numpy.ndarray of float64
        The CDF at each knot (for tied quantiles, the middle of the probabilities they cover).
    """

    knots: np.ndarray
    levels: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, num_quantiles: int = 100) -> QuantileNormalizer:
        """Fit on training values (NaNs ignored).

        Raises
        ------
        ValueError
            If there is no finite value, or ``num_quantiles`` < 1.
        """
        if num_quantiles < 1:
            raise ValueError(f"num_quantiles must be at least 1, got {num_quantiles}")
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError("values has no finite entries to fit a CDF on")
        grid = np.linspace(0.0, 1.0, num_quantiles + 1)
        quantiles = np.quantile(values, grid)
        knots, inverse = np.unique(quantiles, return_inverse=True)
        levels = np.array([grid[inverse == i].mean() for i in range(len(knots))])
        return cls(knots, levels)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``F(x)`` in ``[0, 1)``, float32; NaN maps to 0."""
        x = np.asarray(x, dtype=np.float64)
        if len(self.knots) == 1:  # a constant feature carries no information
            k = self.knots[0]
            out = np.where(x < k, 0.0, np.where(x > k, ONE_BELOW, np.where(x == k, 0.5, np.nan)))
        else:  # NaN in, NaN out
            out = np.asarray(np.interp(x, self.knots, self.levels, left=0.0, right=ONE_BELOW))
        out = np.asarray(np.minimum(out, ONE_BELOW), np.float32)  # NaN stays NaN ...
        out[np.isnan(out)] = 0.0  # ... and maps to 0
        return out

    def expand(self, x: np.ndarray) -> np.ndarray:
        """``[x̃, x̃², √x̃]`` stacked on a last axis of 3."""
        t = self(x)
        out = np.empty((*t.shape, 3), np.float32)
        out[..., 0] = t
        np.multiply(t, t, out=out[..., 1])
        np.sqrt(t, out=out[..., 2])
        return out

    def to_dict(self) -> dict:
        return {"knots": self.knots.tolist(), "levels": self.levels.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> QuantileNormalizer:
        return cls(np.asarray(data["knots"], np.float64), np.asarray(data["levels"], np.float64))
