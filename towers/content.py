"""The content projection: item metadata into the item-vector space, so that an item nobody has
watched yet can be retrieved.

An item's metadata (genres, decade, tags, title words: :func:`towers.features.item_tokens`) becomes
a bag of tokens, and a ridge regression maps the bag onto the item's learned softmax row ``[w_i,
b_i]`` (vector and bias, as the index stores them). It is fitted after the tower, on the items the
tower has learned, weighting each by ``log(1 + its training count)`` since rarely watched items have
noisy rows. The regularisation strength is chosen on a held-out tenth of those items, and the
predictions are then stretched away from the mean row to the learned rows' spread (see
:meth:`ContentProjection.fit`). ``benchmarks/cold_start.py`` compares this with a projection
trained on the softmax objective itself; the numbers are in the README.

Numeric code only: token lists and arrays in, arrays out (``save``/``load`` write one small file).
"""

from __future__ import annotations

import itertools
import json
import numbers
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from towers.checks import positive_int
from towers.features import item_tokens

CONTENT_FILE = "content.npz"
MAX_TOKENS = 64
L2_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def metadata_tokens(
    title: str = "",
    genres: Sequence[str] = (),
    year: float | None = None,
    tags: Sequence[str] = (),
) -> list[str]:
    """The tokens of one item's metadata (see :func:`towers.features.item_tokens`)."""
    return item_tokens(
        str(title or ""),
        float("nan") if year is None else float(year),
        [str(g) for g in genres if str(g) and str(g) != "(no genres listed)"],
        [str(t) for t in tags],
        MAX_TOKENS,
    )


class NoMetadataError(ValueError):
    """The items have too little metadata to fit a projection on."""


def _listed(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list | tuple | np.ndarray) else []


def frame_tokens(items: pd.DataFrame, item_ids: Sequence[str]) -> list[list[str]]:
    """:func:`metadata_tokens` of ``item_ids`` from an item metadata frame (``item_id``,
    ``title``, ``genres``, ``year`` and optionally ``tags``); an unlisted item has none."""
    meta = items.set_index(items["item_id"].astype(str))
    rows = meta.reindex([str(i) for i in item_ids])
    tags = rows["tags"] if "tags" in rows else pd.Series([()] * len(rows), rows.index)
    return [
        metadata_tokens(
            title if isinstance(title, str) else "",
            _listed(genres),
            None if pd.isna(year) else float(year),
            _listed(tag),
        )
        for title, genres, year, tag in zip(
            rows["title"], rows["genres"], rows["year"], tags, strict=True
        )
    ]


def token_vocabulary(
    tokens: Sequence[Sequence[str]], min_count: int = 2, max_features: int = 4000
) -> list[str]:
    """The tokens that get a weight, sorted: the ``max_features`` most frequent of those that
    describe at least ``min_count`` items (ties by token).

    Raises
    ------
    NoMetadataError
        If no token describes ``min_count`` items.
    """
    freq = Counter(t for bag in tokens for t in set(bag))
    common = sorted((t for t, c in freq.items() if c >= min_count), key=lambda t: (-freq[t], t))
    vocabulary = sorted(common[:max_features])
    if not vocabulary:
        raise NoMetadataError(f"no metadata token describes {min_count} or more items")
    return vocabulary


class ContentProjection:
    """A linear map from an item's token bag to its ``[vector, bias]`` row.

    Parameters
    ----------
    vocabulary : sequence of str
        The tokens with a weight; others are ignored.
    weights : numpy.ndarray, shape (len(vocabulary), d)
        One row per token.
    intercept : numpy.ndarray, shape (d,)
        The row of an item with no known token.
    l2 : float
        The ridge strength it was fitted with (reported, not used).
    spread : float
        How far predictions are stretched away from ``center`` (see :meth:`fit`); 1 is the plain
        regression.
    center : numpy.ndarray, shape (d,), optional
        The point stretched away from (the weighted mean row); default ``intercept``.
    """

    def __init__(
        self,
        vocabulary: Sequence[str],
        weights: np.ndarray,
        intercept: np.ndarray,
        l2: float,
        spread: float = 1.0,
        center: np.ndarray | None = None,
    ) -> None:
        self.vocabulary = [str(t) for t in vocabulary]
        self.index = {t: i for i, t in enumerate(self.vocabulary)}
        self.weights = np.asarray(weights, dtype=np.float32)
        self.intercept = np.asarray(intercept, dtype=np.float32)
        if self.weights.shape != (len(self.vocabulary), len(self.intercept)):
            raise ValueError(
                f"weights must have shape ({len(self.vocabulary)}, {len(self.intercept)}), "
                f"got {self.weights.shape}"
            )
        self.l2 = float(l2)
        self.spread = float(spread)
        self.center = self.intercept if center is None else np.asarray(center, np.float32)

    @property
    def dim(self) -> int:
        return len(self.intercept)

    def features(self, tokens: Sequence[Sequence[str]]) -> np.ndarray:
        """The bag matrix: 1 / sqrt(known tokens) for each known token of each item."""
        out = np.zeros((len(tokens), len(self.vocabulary)), dtype=np.float32)
        lengths = np.fromiter((len(bag) for bag in tokens), np.int64, len(tokens))
        if not lengths.sum():
            return out
        rows = np.repeat(np.arange(len(tokens)), lengths)
        cols = pd.Index(self.vocabulary).get_indexer(list(itertools.chain.from_iterable(tokens)))
        # Known tokens, each counted once per item (vectorised: a million items take seconds).
        pairs = np.unique(rows[cols >= 0] * len(self.vocabulary) + cols[cols >= 0])
        rows, cols = np.divmod(pairs, len(self.vocabulary))
        known = np.bincount(rows, minlength=len(tokens))
        out[rows, cols] = 1.0 / np.sqrt(known[rows])
        return out

    def predict(self, tokens: Sequence[Sequence[str]]) -> np.ndarray:
        """``[vector, bias]`` rows for items given by their token lists, float32 ``(n, d)``.

        Raises
        ------
        ValueError
            If ``tokens`` is one string (it would be read as one item per letter).
        """
        if isinstance(tokens, str):
            raise ValueError("tokens must be one list of tokens per item, not one string")
        fitted = self.features(tokens) @ self.weights + self.intercept
        return (self.center + self.spread * (fitted - self.center)).astype(np.float32)

    def known_tokens(self, tokens: Sequence[str]) -> list[str]:
        """The tokens of ``tokens`` that the projection has a weight for."""
        return [t for t in tokens if t in self.index]

    # ----------------------------------------------------------------------------------- fitting
    @classmethod
    def fit(
        cls,
        tokens: Sequence[Sequence[str]],
        targets: np.ndarray,
        counts: np.ndarray | None = None,
        l2: float | Sequence[float] = L2_GRID,
        min_count: int = 2,
        max_features: int = 4000,
        seed: int = 0,
    ) -> ContentProjection:
        """Ridge regression of ``targets`` on the token bags.

        Parameters
        ----------
        tokens : sequence of sequence of str
            Each known item's metadata tokens.
        targets : numpy.ndarray, shape (n_items, d)
            Each item's learned ``[vector, bias]`` row.
        counts : numpy.ndarray, shape (n_items,), optional
            Training interactions per item; the weight of an item is ``log(1 + count)``.
        l2 : float or sequence of float
            The ridge strength, or candidates: the one with the lowest weighted squared error on
            a held-out tenth of the items (``default_rng(seed)``) is refitted on all.
        min_count : int
            A token must describe at least this many items to get a weight.
        max_features : int
            At most this many tokens (the most frequent) get a weight; the fit costs
            ``O(n_items * max_features ** 2)``.

        Raises
        ------
        ValueError
            If the shapes disagree, ``tokens`` is one string, ``targets`` has NaN or infinite
            values, ``counts`` are not finite non-negative numbers (or all 0), ``min_count`` or
            ``max_features`` is not a positive integer, or ``l2`` is not a number >= 0 or a
            non-empty list of them.
        NoMetadataError
            If no token occurs ``min_count`` times.
        """
        if isinstance(tokens, str):
            raise ValueError("tokens must be one list of tokens per item, not one string")
        targets = np.asarray(targets, dtype=np.float64)
        if targets.ndim != 2 or len(targets) != len(tokens):
            raise ValueError(f"targets must be (len(tokens), d), got {targets.shape}")
        bad = np.flatnonzero(~np.isfinite(targets).all(axis=1))
        if len(bad):  # one NaN row would make every prediction NaN
            raise ValueError(f"targets has NaN or infinite values in row(s) {bad[:5].tolist()}")
        positive_int("min_count", min_count)
        positive_int("max_features", max_features)
        if counts is not None:
            counts = np.asarray(counts, dtype=float)
            if counts.shape != (len(tokens),) or not np.all(np.isfinite(counts) & (counts >= 0)):
                raise ValueError(
                    f"counts must be {len(tokens)} finite non-negative numbers, got shape "
                    f"{counts.shape}"
                )
            if not counts.any():
                raise ValueError("counts are all 0: no item has a weight to fit on")
        weight = np.ones(len(tokens)) if counts is None else np.log1p(counts)
        grid = [l2] if isinstance(l2, numbers.Real) else list(l2)  # numpy scalars too
        if not grid or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v) and v >= 0
            for v in grid
        ):
            raise ValueError(f"l2 must be a number >= 0 or a non-empty list of them, got {l2!r}")
        vocabulary = token_vocabulary(tokens, min_count, max_features)
        probe = cls(vocabulary, np.zeros((len(vocabulary), targets.shape[1])), targets[0], 0.0)
        x = probe.features(tokens).astype(np.float64)
        grid = [float(v) for v in grid]
        best = grid[0]
        if len(grid) > 1:
            order = np.random.default_rng(seed).permutation(len(tokens))
            held = order[: max(1, len(tokens) // 10)]
            fit = order[len(held) :]
            solve = _Ridge(x[fit], targets[fit], weight[fit])
            errors = []
            for value in grid:
                w, b = solve(value)
                residual = x[held] @ w + b - targets[held]
                errors.append(float(weight[held] @ (residual**2).sum(axis=1)))
            best = grid[int(np.argmin(errors))]
        w, b = _Ridge(x, targets, weight)(best)
        # A regression predicts the conditional mean, which is pulled towards the mean row: its
        # rows spread ~2.7x less than the learned ones (ml-latest-small). Ranked among trained
        # items, such a row is a middling item for every user, and a new item would never be
        # retrieved. Stretch the predictions away from the weighted mean row until their
        # weighted spread equals the learned rows'. Among new items the order for any user is
        # unchanged (scores move by a per-user constant and a positive factor).
        center = weight @ targets / weight.sum()
        fitted = x @ w + b
        spread = np.sqrt(
            (weight @ ((targets - center) ** 2).sum(axis=1))
            / max(float(weight @ ((fitted - center) ** 2).sum(axis=1)), 1e-12)
        )
        return cls(vocabulary, w, b, best, float(spread), center)

    # ------------------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONTENT_FILE
        np.savez(
            path,
            weights=self.weights,
            intercept=self.intercept,
            l2=np.float64(self.l2),
            spread=np.float64(self.spread),
            center=self.center,
            vocabulary=np.frombuffer(json.dumps(self.vocabulary).encode(), dtype=np.uint8),
        )
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ContentProjection:
        """Load the projection saved in an artefact directory.

        Raises
        ------
        FileNotFoundError
            If the artefact has none (it was trained before content projections existed).
        ValueError
            If the file is damaged (naming it).
        """
        path = Path(directory) / CONTENT_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist: retrain the artefact to add new items from metadata"
            )
        try:
            with np.load(path, allow_pickle=False) as data:
                vocabulary = json.loads(data["vocabulary"].tobytes().decode())
                return cls(
                    vocabulary, data["weights"], data["intercept"], float(data["l2"]),
                    float(data["spread"]), data["center"],
                )  # fmt: skip
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path} is damaged (not a content projection: {exc})") from exc


class _Ridge:
    """Weighted ridge with an unpenalised intercept, for many strengths at the cost of one: the
    data are centred by their weighted means and the Gram matrix is eigendecomposed once."""

    def __init__(self, x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> None:
        total = weight.sum()
        self.x_mean = weight @ x / total
        self.y_mean = weight @ y / total
        xc = x - self.x_mean
        xw = xc * weight[:, None]
        self.eigenvalues, self.eigenvectors = np.linalg.eigh(xw.T @ xc)
        self.projected = self.eigenvectors.T @ (xw.T @ (y - self.y_mean))

    def __call__(self, l2: float) -> tuple[np.ndarray, np.ndarray]:
        w = self.eigenvectors @ (self.projected / (self.eigenvalues + l2)[:, None])
        return w, self.y_mean - self.x_mean @ w
