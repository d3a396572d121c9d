"""Serving-time ranking in numpy: :class:`ranking.model.Ranker`'s inference pass.

As with the tower (``towers/query.py``), calling the Keras model for one request of 100
candidates costs milliseconds of dispatch on 2 CPU cores; :class:`RankScorer` copies the weights
once and runs the same arithmetic in numpy. ``tests/ranking/test_scorer.py`` checks it against
the Keras model; the ranker SavedModel runs the Keras graph itself. Its arrays are saved with
the ranker (``ranker/serving.npz``), so a server loads it without TensorFlow building it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ranking.ensemble import RankerEnsemble
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


def member_prefix(member: int) -> str:
    """The prefix of a member's arrays: none for the first (as a single ranker's), then
    ``member<m>/``."""
    return f"member{member}/" if member else ""


def _member_arrays(ranker: Ranker) -> dict[str, np.ndarray]:
    """One network's weights: embeddings (pad and unknown rows zeroed, as the model masks
    them), demographic tables (OOV row zeroed) and the two towers."""
    embedding = ranker.item_embedding.embeddings.numpy().copy()
    embedding[:2] = 0.0
    bias = ranker.item_bias.embeddings.numpy()[:, 0].copy()
    bias[:2] = 0.0
    arrays = {
        "item_embedding": embedding,
        "item_bias": bias,
        **_stack("rank", [*ranker.rank_tower, ranker.rank_out]),
        **_stack("rating", [*ranker.rating_tower, ranker.rating_out]),
    }
    if ranker.rated_embedding is not None:
        arrays["rated_embedding"] = ranker.rated_embedding.embeddings.numpy()
    for col in ranker.demographic_vocabularies:
        table = ranker.demographic_embeddings[col].embeddings.numpy().copy()
        table[0] = 0.0
        arrays[f"demographic/{col}"] = table
    return arrays


@dataclass
class _Member:
    """One network's tables and layers, as :class:`RankScorer` runs them."""

    embedding: np.ndarray
    bias: np.ndarray
    demographics: dict[str, np.ndarray]
    rated: np.ndarray | None
    rank_layers: list[tuple[np.ndarray, np.ndarray, bool]]
    rating_layers: list[tuple[np.ndarray, np.ndarray, bool]]


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
        ``rating``; ``rated_embedding`` when ``config.rated_bag``. With ``config.members > 1``
        member ``m >= 1`` has its own of all but ``genres`` and ``years``, named with the
        prefix ``member<m>/`` (:func:`member_prefix`).
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
        self._genres = self._array("genres", rows)
        self._years = self._array("years", rows)
        self._cdf = dict(normalizers)
        self._vocab = {
            col: {v: i + 1 for i, v in enumerate(vocab)}
            for col, vocab in self.demographic_vocabularies.items()
        }
        self._members = [self._member(member_prefix(m), rows) for m in range(config.members)]

    def _member(self, prefix: str, rows: int) -> _Member:
        return _Member(
            embedding=self._array(prefix + "item_embedding", rows),
            bias=self._array(prefix + "item_bias", rows),
            demographics={col: self._array(f"{prefix}demographic/{col}") for col in self._vocab},
            rated=self._array(prefix + "rated_embedding", rows) if self.config.rated_bag else None,
            rank_layers=self._layers(prefix + "rank"),
            rating_layers=self._layers(prefix + "rating"),
        )

    def _array(self, name: str, rows: int | None = None) -> np.ndarray:
        return named_array(self.arrays, name, "ranker", rows)

    def _layers(self, prefix: str) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        return [
            (self._array(f"{prefix}_{i}/kernel"), self._array(f"{prefix}_{i}/bias"), bool(r))
            for i, r in enumerate(self._array(f"{prefix}_relu"))
        ]

    @classmethod
    def from_model(cls, ranker: Ranker | RankerEnsemble) -> RankScorer:
        """The scorer of a trained (built) ranker or ensemble; its weights are copied."""
        members = ranker.members if isinstance(ranker, RankerEnsemble) else [ranker]
        arrays = {"genres": ranker.genre_table.numpy(), "years": ranker.year_table.numpy()}
        for m, member in enumerate(members):
            prefix = member_prefix(m)
            arrays.update({prefix + name: a for name, a in _member_arrays(member).items()})
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

    @staticmethod
    def _rated_bag(
        table: np.ndarray, history: np.ndarray, ratings: np.ndarray | None
    ) -> np.ndarray:
        """:meth:`ranking.model.Ranker._rated_bag` in numpy (``table``: the rated embedding)."""
        if ratings is None:
            ratings = np.full(history.shape, np.nan, np.float32)
        ratings = np.asarray(ratings, np.float32).reshape(history.shape)
        rated = ~np.isnan(ratings) & (history >= 2)
        count = rated.sum(1, keepdims=True).astype(np.float32)
        values = np.where(rated, ratings, 0.0)
        mean = values.sum(1, keepdims=True) / np.maximum(count, 1.0)
        deviation = (values - mean) * rated
        bag = np.einsum("bh,bhd->bd", deviation, table[history])
        return bag / np.sqrt(np.maximum(count, 1.0))

    def __call__(
        self, inputs: Mapping[str, np.ndarray], rating: bool = True
    ) -> dict[str, np.ndarray]:
        """``{"logit", "serving_logit", "rating"}`` for the raw input dict of
        :func:`ranking.train.ranker_inputs` (one row per candidate; ``history``, and
        ``history_rating`` aligned with it, may be a single row shared by every candidate;
        without ``history_rating`` no rating is known). ``serving_logit`` is
        :meth:`ranking.model.Ranker.serving_logit`. ``rating=False`` skips the rating head
        (ranking needs only the logits). An ensemble's outputs are its members' means, as
        :class:`ranking.ensemble.RankerEnsemble`'s; the features the members share are
        computed once."""
        item = self.positions(inputs["item_id"])
        n = len(item)
        history = self.positions(inputs["history"])
        known = (history >= 2).astype(np.float32)
        common = [self._genres[item], self._cdf["year"].expand(self._years[item])]
        for name in RATING_FEATURES:
            common.append(self._cdf[name].expand(np.asarray(inputs[name], np.float32)))
        mean = np.asarray(inputs["user_mean"], np.float32).reshape(-1, 1)
        common.append(np.where(np.isnan(mean), 0.0, mean / 5.0))
        demographic_rows = {}
        for col in DEMOGRAPHIC_COLUMNS:
            if col in self._vocab:
                values = np.asarray(inputs[col], dtype=object).ravel()
                get = self._vocab[col].get
                demographic_rows[col] = np.fromiter(
                    (get(str(v), 0) for v in values), np.int64, len(values)
                )
        ranking_only = [
            self._cdf[name].expand(np.asarray(inputs[name], np.float32))
            for name in NUMERIC
            if name not in RATING_FEATURES
        ]
        if self.config.user_genres:
            profile = genre_profile(self._genres[history], known)  # one row per history row
            profile = np.broadcast_to(profile, (n, profile.shape[1]))
            ranking_only.append(genre_affinity(profile, self._genres[item]))
        logits, ratings = [], []
        for member in self._members:
            bag = (member.embedding[history] * known[..., None]).sum(1) / np.maximum(
                known.sum(1, keepdims=True), 1.0
            )
            if len(bag) == 1 and n > 1:
                bag = np.repeat(bag, n, axis=0)
            item_vec = member.embedding[item]
            parts = [item_vec, bag, (item_vec * bag).sum(1, keepdims=True), *common]
            parts += [member.demographics[col][rows] for col, rows in demographic_rows.items()]
            shared = np.concatenate([np.broadcast_to(p, (n, p.shape[1])) for p in parts], axis=1)
            x = np.concatenate([shared, *ranking_only], axis=1).astype(np.float32)
            logits.append(_dense(x, member.rank_layers)[:, 0])
            if rating:
                ratings.append(self._rating(member, shared, item_vec, item, history, inputs))
        logit = logits[0] if len(logits) == 1 else np.mean(logits, axis=0)
        out = {"logit": logit, "serving_logit": logit}
        if self.config.tower_score_weight:
            score = np.asarray(inputs["tower_score"], np.float32).ravel()
            out["serving_logit"] = logit + self.config.tower_score_weight * score
        if rating:
            out["rating"] = ratings[0] if len(ratings) == 1 else np.mean(ratings, axis=0)
        return out

    def _rating(self, member: _Member, shared, item_vec, item, history, inputs) -> np.ndarray:
        """One member's rating head."""
        n = len(item)
        r = shared.astype(np.float32)
        if member.rated is not None:
            rated_bag = self._rated_bag(member.rated, history, inputs.get("history_rating"))
            if len(rated_bag) == 1 and n > 1:
                rated_bag = np.repeat(rated_bag, n, axis=0)
            rated_dot = (item_vec * rated_bag).sum(1, keepdims=True)
            r = np.concatenate([r, rated_bag, rated_dot], axis=1).astype(np.float32)
        z = _dense(r, member.rating_layers)[:, 0] + member.bias[item]
        low, high = RATING_RANGE
        return low + (high - low) / (1.0 + np.exp(-z))


def _dense(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray, bool]]) -> np.ndarray:
    for kernel, bias, relu in layers:
        x = x @ kernel + bias
        if relu:
            x = np.maximum(x, 0.0)
    return x
