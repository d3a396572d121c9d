"""Serving-time ranking in numpy: :class:`ranking.model.Ranker`'s inference pass.

As with the tower (``towers/query.py``), calling the Keras model for one request of 100
candidates costs milliseconds of dispatch on 2 CPU cores; :class:`RankScorer` copies the weights
once and runs the same arithmetic in numpy. ``tests/ranking/test_scorer.py`` checks it against
the Keras model; the ranker SavedModel runs the Keras graph itself. Its arrays are saved with
the ranker (``ranker/serving.npz``), so a server loads it without TensorFlow building it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ranking.impressions import NUMERIC
from ranking.model import (
    RATING_FEATURES,
    RATING_RANGE,
    Ranker,
    RankerConfig,
    genre_affinity,
    genre_profile,
)
from ranking.normalize import QuantileNormalizer
from towers.features import DEMOGRAPHIC_COLUMNS
from towers.query import named_array


def _stack(prefix: str, layers) -> dict[str, np.ndarray]:
    out = {f"{prefix}_relu": np.array([layer.activation.__name__ == "relu" for layer in layers])}
    for i, layer in enumerate(layers):
        out[f"{prefix}_{i}/kernel"] = layer.kernel.numpy()
        out[f"{prefix}_{i}/bias"] = layer.bias.numpy()
    return out


class RankScorer:
    """Ranking logits and predicted ratings for raw candidate rows.

    Built from a trained ranker (:meth:`from_model`) or from the plain arrays it was saved as
    (:attr:`arrays`; ``ranking.artefact.save_ranker`` writes them), without Keras.

    Parameters
    ----------
    config : RankerConfig
    item_ids : sequence of str
        The ranker's item vocabulary (lookup position ``i + 2``).
    arrays : mapping of str to ndarray
        ``item_embedding`` and ``item_bias`` (rows 0 and 1, pad and unknown, zero), ``genres``
        and ``years`` per lookup position, ``demographic/<col>`` (row 0, unknown, zero), and
        the layers ``rank_<i>/kernel``, ``rank_<i>/bias``, ``rank_relu`` and the same for
        ``rating``; ``rated_embedding`` when ``config.rated_bag``.
    normalizers : mapping of str to QuantileNormalizer
        The continuous features' quantile CDFs.
    demographic_vocabularies : mapping of str to sequence of str, optional

    Raises
    ------
    ValueError
        If an array is missing or does not fit the vocabularies (naming it).
    """

    def __init__(
        self,
        config: RankerConfig,
        item_ids: Sequence[str],
        arrays: Mapping[str, np.ndarray],
        normalizers: Mapping[str, QuantileNormalizer],
        demographic_vocabularies: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.config = config
        self.arrays = {name: np.asarray(a) for name, a in arrays.items()}
        self.demographic_vocabularies = dict(demographic_vocabularies or {})
        self._position = {item: i + 2 for i, item in enumerate(item_ids)}
        rows = len(item_ids) + 2
        self._embedding = self._array("item_embedding", rows)
        self._bias = self._array("item_bias", rows)
        self._genres = self._array("genres", rows)
        self._years = self._array("years", rows)
        self._cdf = dict(normalizers)
        self._demographics = {
            col: ({v: i + 1 for i, v in enumerate(vocab)}, self._array(f"demographic/{col}"))
            for col, vocab in self.demographic_vocabularies.items()
        }
        self._rated = self._array("rated_embedding", rows) if config.rated_bag else None
        self._rank_layers = self._layers("rank")
        self._rating_layers = self._layers("rating")

    def _array(self, name: str, rows: int | None = None) -> np.ndarray:
        return named_array(self.arrays, name, "ranker", rows)

    def _layers(self, prefix: str) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        return [
            (self._array(f"{prefix}_{i}/kernel"), self._array(f"{prefix}_{i}/bias"), bool(r))
            for i, r in enumerate(self._array(f"{prefix}_relu"))
        ]

    @classmethod
    def from_model(cls, ranker: Ranker) -> RankScorer:
        """The scorer of a trained (built) ranker; its weights are copied."""
        embedding = ranker.item_embedding.embeddings.numpy().copy()
        embedding[:2] = 0.0  # pad and unknown embed to zero, as the model masks them
        bias = ranker.item_bias.embeddings.numpy()[:, 0].copy()
        bias[:2] = 0.0
        arrays = {
            "item_embedding": embedding,
            "item_bias": bias,
            "genres": ranker.genre_table.numpy(),
            "years": ranker.year_table.numpy(),
            **_stack("rank", [*ranker.rank_tower, ranker.rank_out]),
            **_stack("rating", [*ranker.rating_tower, ranker.rating_out]),
        }
        if ranker.rated_embedding is not None:
            arrays["rated_embedding"] = ranker.rated_embedding.embeddings.numpy()
        for col in ranker.demographic_vocabularies:
            table = ranker.demographic_embeddings[col].embeddings.numpy().copy()
            table[0] = 0.0  # the OOV row, masked to zero by the model
            arrays[f"demographic/{col}"] = table
        return cls(
            ranker.config,
            ranker.item_ids,
            arrays,
            ranker.normalizers,
            ranker.demographic_vocabularies,
        )

    def positions(self, ids: np.ndarray) -> np.ndarray:
        get = self._position.get
        flat = np.asarray(ids, dtype=object).ravel()
        out = np.fromiter((get(i, 0 if i == "" else 1) for i in flat), np.int64, len(flat))
        return out.reshape(np.shape(ids))

    def _rated_bag(self, history: np.ndarray, ratings: np.ndarray | None) -> np.ndarray:
        """:meth:`ranking.model.Ranker._rated_bag` in numpy."""
        if ratings is None:
            ratings = np.full(history.shape, np.nan, np.float32)
        ratings = np.asarray(ratings, np.float32).reshape(history.shape)
        rated = ~np.isnan(ratings) & (history >= 2)
        count = rated.sum(1, keepdims=True).astype(np.float32)
        values = np.where(rated, ratings, 0.0)
        mean = values.sum(1, keepdims=True) / np.maximum(count, 1.0)
        deviation = (values - mean) * rated
        bag = np.einsum("bh,bhd->bd", deviation, self._rated[history])
        return bag / np.sqrt(np.maximum(count, 1.0))

    def __call__(
        self, inputs: Mapping[str, np.ndarray], rating: bool = True
    ) -> dict[str, np.ndarray]:
        """``{"logit", "serving_logit", "rating"}`` for the raw input dict of
        :func:`ranking.train.ranker_inputs` (one row per candidate; ``history``, and
        ``history_rating`` aligned with it, may be a single row shared by every candidate;
        without ``history_rating`` no rating is known). ``serving_logit`` is
        :meth:`ranking.model.Ranker.serving_logit`. ``rating=False`` skips the rating head
        (ranking needs only the logits)."""
        item = self.positions(inputs["item_id"])
        n = len(item)
        history = self.positions(inputs["history"])
        known = (history >= 2).astype(np.float32)
        bag = (self._embedding[history] * known[..., None]).sum(1) / np.maximum(
            known.sum(1, keepdims=True), 1.0
        )
        if len(bag) == 1 and n > 1:
            bag = np.repeat(bag, n, axis=0)
        item_vec = self._embedding[item]
        parts = [item_vec, bag, (item_vec * bag).sum(1, keepdims=True), self._genres[item]]
        parts.append(self._cdf["year"].expand(self._years[item]))
        for name in RATING_FEATURES:
            parts.append(self._cdf[name].expand(np.asarray(inputs[name], np.float32)))
        mean = np.asarray(inputs["user_mean"], np.float32).reshape(-1, 1)
        parts.append(np.where(np.isnan(mean), 0.0, mean / 5.0))
        for col in DEMOGRAPHIC_COLUMNS:
            if col in self._demographics:
                vocab, table = self._demographics[col]
                values = np.asarray(inputs[col], dtype=object).ravel()
                rows = np.fromiter((vocab.get(str(v), 0) for v in values), np.int64, len(values))
                parts.append(table[rows])
        shared = np.concatenate([np.broadcast_to(p, (n, p.shape[1])) for p in parts], axis=1)
        ranking = [shared] + [
            self._cdf[name].expand(np.asarray(inputs[name], np.float32))
            for name in NUMERIC
            if name not in RATING_FEATURES
        ]
        if self.config.user_genres:
            profile = genre_profile(self._genres[history], known)  # one row per history row
            profile = np.broadcast_to(profile, (n, profile.shape[1]))
            ranking.append(genre_affinity(profile, self._genres[item]))
        x = np.concatenate(ranking, axis=1).astype(np.float32)
        for kernel, bias, relu in self._rank_layers:
            x = x @ kernel + bias
            if relu:
                x = np.maximum(x, 0.0)
        logits = {"logit": x[:, 0], "serving_logit": x[:, 0]}
        if self.config.tower_score_weight:
            score = np.asarray(inputs["tower_score"], np.float32).ravel()
            logits["serving_logit"] = x[:, 0] + self.config.tower_score_weight * score
        if not rating:
            return logits
        r = shared.astype(np.float32)
        if self._rated is not None:
            rated_bag = self._rated_bag(history, inputs.get("history_rating"))
            if len(rated_bag) == 1 and n > 1:
                rated_bag = np.repeat(rated_bag, n, axis=0)
            rated_dot = (item_vec * rated_bag).sum(1, keepdims=True)
            r = np.concatenate([r, rated_bag, rated_dot], axis=1).astype(np.float32)
        for kernel, bias, relu in self._rating_layers:
            r = r @ kernel + bias
            if relu:
                r = np.maximum(r, 0.0)
        low, high = RATING_RANGE
        z = r[:, 0] + self._bias[item]
        return {**logits, "rating": low + (high - low) / (1.0 + np.exp(-z))}
