"""Serving-time ranking in numpy: :class:`ranking.model.Ranker`'s inference pass.

As with the tower (``towers/query.py``), calling the Keras model for one request of 100
candidates costs milliseconds of dispatch on 2 CPU cores; :class:`RankScorer` copies the weights
once and runs the same arithmetic in numpy. ``tests/ranking/test_ranker.py`` checks it against
the Keras model; the ranker SavedModel runs the Keras graph itself. Its arrays are saved with
the ranker (``ranker/serving.npz``), so a server loads it without TensorFlow building it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from ranking.ensemble import RankerEnsemble
from ranking.impressions import NUMERIC
from ranking.model import (
    RATING_FEATURES,
    RATING_RANGE,
    Ranker,
    RankerConfig,
    genre_profile,
)
from ranking.normalize import QuantileNormalizer
from ranking.numpy_net import (
    ITEM,
    ROW,
    USER,
    Member,
    Split,
    columns,
    dense,
    grown,
    member_arrays,
    member_prefix,
)
from towers.examples import PAD
from towers.features import DEMOGRAPHIC_COLUMNS
from towers.query import named_array

#: Numeric inputs that describe the user, not the candidate: one value per serving request.
USER_LEVEL = ("time_since_last", "prev_impressions", "user_count", "user_mean")


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
        genre_names: Sequence[str] | None = None,
    ) -> None:
        self.config = config
        self.genre_names = None if genre_names is None else [str(g) for g in genre_names]
        self.arrays = {name: np.asarray(a) for name, a in arrays.items()}
        self.demographic_vocabularies = dict(demographic_vocabularies or {})
        self._position = {item: i + 2 for i, item in enumerate(item_ids)}
        self._position[PAD] = 0
        rows = len(item_ids) + 2
        self._genres = self._array("genres", rows)
        self._years = self._array("years", rows)
        self._cdf = dict(normalizers)
        self._year_features = self._cdf["year"].expand(self._years)  # per lookup position
        # genre_affinity's divisor per lookup position: the item's genre count, at least 1.
        self._genre_counts = np.maximum(self._genres.sum(1, keepdims=True), 1.0)
        self._vocab = {
            col: {v: i + 1 for i, v in enumerate(vocab)}
            for col, vocab in self.demographic_vocabularies.items()
        }
        self._members = [self._member(member_prefix(m), rows) for m in range(config.members)]
        self._trained_rows = rows  # lookup positions past these are items added at run time
        if self.genre_names is not None and len(self.genre_names) != self._genres.shape[1]:
            raise ValueError(
                f"genre_names has {len(self.genre_names)} names for {self._genres.shape[1]} "
                "genre columns"
            )

    def _member(self, prefix: str, rows: int) -> Member:
        return Member(
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
            arrays.update({prefix + name: a for name, a in member_arrays(member).items()})
        return cls(
            ranker.config,
            ranker.item_ids,
            arrays,
            ranker.normalizers,
            ranker.demographic_vocabularies,
            getattr(ranker, "genre_names", None),
        )

    def add_items(
        self,
        item_ids: Sequence[str],
        genres: Sequence[Sequence[str] | None],
        years: Sequence[float | None],
    ) -> list[str]:
        """Give items the ranker was not trained on their genres and year, so that a candidate
        placed from metadata (``POST /v1/items``) is scored with them rather than as an unknown
        ID with no metadata. Its ID embedding and bias stay zero, as an unknown ID's; in a
        history it still counts as unknown (the bag reads trained items only). Items of the
        training vocabulary are skipped, one added before is updated, and genre names the
        ranker was not trained with are ignored. Returns the IDs added or updated.

        Safe against concurrent scoring: the rows are written before the IDs are published.
        Calls to it must not overlap (the live service makes them under one lock).

        Raises
        ------
        ValueError
            If ``item_ids``, ``genres`` and ``years`` differ in length.
        """
        if not len(item_ids) == len(genres) == len(years):
            raise ValueError(
                f"item_ids, genres and years have {len(item_ids)}, {len(genres)} and "
                f"{len(years)} entries"
            )
        column = {g: j for j, g in enumerate(self.genre_names or ())}
        end = len(self._position) + 1  # positions in use: the items, pad and unknown
        rows: dict[str, int] = {}  # each added or updated item's position
        for item in map(str, item_ids):
            position = rows.get(item, self._position.get(item, end))
            if position >= self._trained_rows:  # a trained item keeps its own row
                rows[item] = position
                end += position == end
        self._grow(end)
        done: list[str] = []
        for item, gs, year in zip(map(str, item_ids), genres, years, strict=True):
            if item not in rows:
                continue
            position = rows[item]
            self._genres[position] = 0.0
            for g in () if gs is None else gs:
                if str(g) in column:
                    self._genres[position, column[str(g)]] = 1.0
            self._years[position] = np.nan if year is None else float(year)
            done.append(item)
        written = np.fromiter(rows.values(), np.int64, len(rows))
        self._year_features[written] = self._cdf["year"].expand(self._years[written])
        self._genre_counts[written] = np.maximum(self._genres[written].sum(1, keepdims=True), 1)
        for member in self._members:
            split = member.split
            if split is not None and split.item_table is not None and ITEM in split.kernels:
                features = self._item_features(member, written)
                split.item_table[written] = features.astype(np.float32) @ split.kernels[ITEM]
        self._position.update(rows)  # last: a request finds the item only once it is written
        return done

    def reserve(self, items: int) -> None:
        """Room for ``items`` more items in every per-position table, so that the first
        :meth:`add_items` calls copy nothing (a copy of the tables costs tens of milliseconds
        at 10,000 items; the service reserves at load, after the serving tables are built)."""
        self._grow(len(self._position) + 1 + items, double=False)

    def _grow(self, rows: int, double: bool = True) -> None:
        """Room for ``rows`` lookup positions in every per-position table (by default at least
        doubling, so that adding items one at a time copies each table O(log n) times)."""

        def grow(table: np.ndarray, fill: float = 0.0) -> np.ndarray:
            return grown(table, rows, fill, double)

        self._genres, self._years = grow(self._genres), grow(self._years)
        self._year_features = grow(self._year_features)
        self._genre_counts = grow(self._genre_counts, fill=1.0)
        for member in self._members:
            member.embedding, member.bias = grow(member.embedding), grow(member.bias)
            if member.rated is not None:
                member.rated = grow(member.rated)
            if member.split is not None and member.split.item_table is not None:
                member.split.item_table = grow(member.split.item_table)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Lookup positions of raw item IDs: 0 for padding (``""``), 1 for an unknown ID."""
        flat = np.asarray(ids, dtype=object).ravel()
        found = map(self._position.get, flat, itertools.repeat(1, len(flat)))
        return np.fromiter(found, np.int64, len(flat)).reshape(np.shape(ids))

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
        self, inputs: Mapping[str, np.ndarray], rating: bool = True, one_user: bool = False
    ) -> dict[str, np.ndarray]:
        """``{"logit", "serving_logit", "rating"}`` for the raw input dict of
        :func:`ranking.train.ranker_inputs` (one row per candidate; ``history``, and
        ``history_rating`` aligned with it, may be a single row shared by every candidate;
        without ``history_rating`` no rating is known). ``serving_logit`` is
        :meth:`ranking.model.Ranker.serving_logit`. ``rating=False`` skips the rating head
        (ranking needs only the logits). An ensemble's outputs are its members' means, as
        :class:`ranking.ensemble.RankerEnsemble`'s; the features the members share are
        computed once.

        A serving request scores one user's candidates: its history is one row, and its user
        features (counts, mean rating, time since the last event, demographics) are the same on
        every row. The ranking head's first layer then takes those features once, as one row,
        and each candidate's item-only features (embedding, genres, year) as a row of a table
        multiplied once per model (:class:`Split`); the logits are the same up to float
        rounding. ``one_user=True`` says so for the per-user inputs, which may then be given as
        one row each (the check that they agree is skipped, and only their first row is read)."""
        item = self.positions(inputs["item_id"])
        n = len(item)
        history = self.positions(inputs["history"])
        if len(self._position) + 1 > self._trained_rows:  # items added at run time: unknown here
            history = np.where(history < self._trained_rows, history, 1)
        known = (history >= 2).astype(np.float32)
        demographic_rows = {}
        for col in DEMOGRAPHIC_COLUMNS:
            if col in self._vocab:
                values = np.asarray(inputs[col], dtype=object).ravel()
                values = values[:1] if one_user else values
                get = self._vocab[col].get
                demographic_rows[col] = np.fromiter(
                    (get(str(v), 0) for v in values), np.int64, len(values)
                )
        one = n > 1 and len(history) == 1 and (one_user or self._one_user(inputs, demographic_rows))
        if one:  # every per-user feature from the first row only
            demographic_rows = {col: rows[:1] for col, rows in demographic_rows.items()}

        def expand(name: str) -> tuple[np.ndarray, str]:
            values = np.asarray(inputs[name], np.float32)
            if name in USER_LEVEL:
                return self._cdf[name].expand(values[:1] if one else values), USER
            return self._cdf[name].expand(values), ROW

        genres = self._genres[item]
        common = [(genres, ITEM), (self._year_features[item], ITEM)]
        common += [expand(name) for name in RATING_FEATURES]
        mean = np.asarray(inputs["user_mean"], np.float32).reshape(-1, 1)
        common.append((np.where(np.isnan(mean), 0.0, mean / 5.0)[: 1 if one else None], USER))
        ranking_only = [expand(name) for name in NUMERIC if name not in RATING_FEATURES]
        if self.config.user_genres:
            profile = genre_profile(self._genres[history], known)  # one row per history row
            # genre_affinity's columns past the profile, which is already a USER block.
            matched = profile * genres
            affinity = matched.sum(1, keepdims=True) / self._genre_counts[item]
            ranking_only += [(profile, USER), (matched, ROW), (affinity, ROW)]
        logits, ratings = [], []
        for member in self._members:
            bag = (member.embedding[history] * known[..., None]).sum(1) / np.maximum(
                known.sum(1, keepdims=True), 1.0
            )
            item_vec = member.embedding[item]
            dot = (item_vec * bag).sum(1, keepdims=True)  # bag has 1 or n rows
            parts = [(item_vec, ITEM), (bag, USER), (dot, ROW), *common]
            parts += [(member.demographics[c][rows], USER) for c, rows in demographic_rows.items()]
            blocks = [*parts, *ranking_only]
            if one:
                logits.append(self._rank_logit(member, blocks, item))
            else:
                logits.append(dense(columns(blocks, n), member.rank_layers)[:, 0])
            if rating:
                shared = columns(parts, n)
                ratings.append(self._rating(member, shared, item_vec, item, history, inputs))
        logit = logits[0] if len(logits) == 1 else sum(logits[1:], logits[0]) / len(logits)
        out = {"logit": logit, "serving_logit": logit}
        if self.config.tower_score_weight:
            score = np.asarray(inputs["tower_score"], np.float32).ravel()
            out["serving_logit"] = logit + self.config.tower_score_weight * score
        if rating:
            out["rating"] = (
                ratings[0] if len(ratings) == 1 else sum(ratings[1:], ratings[0]) / len(ratings)
            )
        return out

    @staticmethod
    def _one_user(inputs: Mapping[str, np.ndarray], demographic_rows: dict) -> bool:
        """Whether every per-user input holds one value (or NaN) on all rows."""
        values = np.stack([np.asarray(inputs[name], np.float32).ravel() for name in USER_LEVEL])
        first = values[:, :1]
        same = (values == first) | (np.isnan(values) & np.isnan(first))
        return bool(same.all()) and all(
            rows.min() == rows.max() for rows in demographic_rows.values()
        )

    def _item_features(self, member: Member, rows: np.ndarray | None = None) -> np.ndarray:
        """The item-only blocks of every lookup position (or of ``rows``), in their column
        order: embedding, genres, year features."""
        tables = (member.embedding, self._genres, self._year_features)
        if rows is not None:
            tables = tuple(t[rows] for t in tables)
        return np.concatenate(tables, axis=1)

    def _rank_logit(
        self, member: Member, blocks: list[tuple[np.ndarray, str]], item: np.ndarray
    ) -> np.ndarray:
        """The ranking head for one user's candidates (``blocks`` of :meth:`__call__`'s serving
        case: ``USER`` blocks one row, the others one row per candidate)."""
        kinds = tuple(kind for _, kind in blocks)
        split = member.split
        if split is None or split.kinds != kinds:
            split = member.split = Split.of(member, blocks, self._item_features)
        _, bias, relu = member.rank_layers[0]
        n = len(item)
        # Summed in place into the item share, a fresh array (a gather or a product).
        h = split.item_share(blocks, item)
        h += split.product(blocks, ROW, n)
        h += split.product(blocks, USER, n) + bias  # one row, broadcast over the candidates
        if relu:
            np.maximum(h, 0.0, out=h)
        return dense(h, member.rank_layers[1:])[:, 0]

    def _rating(self, member: Member, shared, item_vec, item, history, inputs) -> np.ndarray:
        """One member's rating head."""
        n = len(item)
        r = shared.astype(np.float32, copy=False)
        if member.rated is not None:
            rated_bag = self._rated_bag(member.rated, history, inputs.get("history_rating"))
            if len(rated_bag) == 1 and n > 1:
                rated_bag = np.repeat(rated_bag, n, axis=0)
            rated_dot = (item_vec * rated_bag).sum(1, keepdims=True)
            r = np.concatenate([r, rated_bag, rated_dot], axis=1).astype(np.float32)
        z = dense(r, member.rating_layers)[:, 0] + member.bias[item]
        low, high = RATING_RANGE
        return low + (high - low) / (1.0 + np.exp(-z))
