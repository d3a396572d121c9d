"""The ranking network of Covington et al. (2016), Sec. 4 and Fig. 7, with a rating head.

Features of one (user, candidate) pair:

* the candidate's item-ID embedding, and the mean embedding of the user's watched-ID bag (one
  table, shared: the paper shares embeddings among features of the same ID space), plus their
  dot product;
* the candidate's genres (multi-hot) and year, looked up inside the model from its ID;
* continuous features, each quantile-normalised to ``x̃ in [0, 1)`` and fed as ``x̃, x̃², √x̃``:
  the generator's score and rank, time since the user's last watch, previous impressions of the
  candidate, the user's rating count and mean, the candidate's popularity and year;
* demographics where the data has them;
* with ``user_genres`` (the default), the ranking head also sees the user's genre profile (the
  share of their history in each genre), its product with the candidate's genres, and the
  candidate's genre affinity (the profile's mean over the candidate's genres): the paper's "how
  the user interacted with similar items", which the history bag leaves the network to learn.

Embedding widths grow with the log of the vocabulary (``~4 log2 |V|``); unknown IDs map to a zero
vector (index 0 of each table stays zero). Two heads share the embeddings:

* **ranking**: a ReLU tower to one logit, trained by weighted logistic regression (positives
  weighted by rating, negatives by 1) and served as ``exp(logit)``, the paper's expected-watch-time
  trick (here: expected rating-weighted watch odds). With ``tower_score_weight = beta > 0`` the
  served score is ``exp(logit + beta * tower_score)``: the ranker's odds times the generator's
  softmax probability to the power ``beta`` (a product of experts). ``beta`` is applied after
  training only (the head is trained alone), because the generator's in-sample scores, on the
  events it was trained on, are more confident than its scores on new events;
* **rating**: a ReLU tower to ``0.5 + 5 * sigmoid(z)``, trained by squared error on known ratings.
  With ``rated_bag`` it also sees how the user rated their history: ``sum_j (r_j - mean r) y_j /
  sqrt(n)`` over the rated history items, from a second item table ``y`` (the user factor of
  Koren's asymmetric SVD, which needs no per-user parameter), and its dot product with the
  candidate's embedding. Only the rating head sees it, so ranking needs no ratings at serving.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ranking.impressions import NUMERIC
from ranking.normalize import ONE_BELOW, QuantileNormalizer
from towers._tf import UntrackedList, keras, tf
from towers.checks import check_field_types

tnp = tf.experimental.numpy
RATING_RANGE = (0.5, 5.5)
RATING_FEATURES = ("user_count", "user_mean", "item_popularity")


@dataclass(frozen=True)
class RankerConfig:
    """Hyperparameters of the ranker.

    Attributes
    ----------
    hidden_units : tuple of int
        ReLU tower of the ranking head (the paper's best: 1024 -> 512 -> 256; smaller here).
    rating_units : tuple of int
        ReLU tower of the rating head.
    embedding_scale : float
        Embedding width ``= ceil(scale * log2(vocabulary + 1))``.
    max_history : int
        Watched items in the bag.
    dropout : float
    rating_weight : float
        Weight of the rating loss against the ranking loss.
    num_quantiles : int
        Resolution of each continuous feature's CDF.
    rated_bag : bool
        Give the rating head the rating-weighted history bag (input ``history_rating``, aligned
        with ``history``, NaN where unknown). Off by default: the served ranker ranks, and
        the two-stage benchmark measured it without.
    tower_score_weight : float
        ``beta >= 0`` of the served score ``exp(logit + beta * tower_score)``; not used in
        training. 0 (the default) serves the ranking head alone, as the paper does.
    user_genres : bool
        Give the ranking head the user's genre profile and the candidate's affinity to it
        (:func:`genre_profile`, :func:`genre_affinity`). On by default: on the validation
        carves of both MovieLens sets it raised the two-stage gain at every tower-score weight
        tried (README). Rankers saved before it existed load with it off, as they were trained.
    members : int
        Ranking networks trained apart (seeds ``seed``, ``seed + 1``, ...) on the same rows and
        served as one (:class:`RankerEnsemble`): the mean of their logits and of their
        ratings. 1, the default, is the paper's single network.
    tower_score_offset : bool
        Train the ranking head on the served logit ``logit + tower_score_weight * tower_score``
        (the generator's score as a fixed offset of the logistic regression) instead of on
        ``logit`` alone, so that it learns only what that score leaves out. Off by default: on
        ml-100k's validation carve it lowered the two-stage gain at both weights tried (README,
        "Ranking"; ``benchmarks/results/tune_ranker.json``).
    """

    hidden_units: tuple[int, ...] = (256, 128, 64)
    rating_units: tuple[int, ...] = (128, 64)
    embedding_scale: float = 4.0
    max_history: int = 50
    dropout: float = 0.1
    rating_weight: float = 1.0
    num_quantiles: int = 100
    rated_bag: bool = False
    tower_score_weight: float = 0.0
    user_genres: bool = True
    members: int = 1
    tower_score_offset: bool = False

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {self.members}")
        if self.max_history < 1 or self.num_quantiles < 1:
            raise ValueError(
                f"max_history and num_quantiles must be >= 1, got {self.max_history}, "
                f"{self.num_quantiles}"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if any(u < 1 for u in (*self.hidden_units, *self.rating_units)):
            raise ValueError(
                f"hidden_units and rating_units must be >= 1, got {self.hidden_units}, "
                f"{self.rating_units}"
            )
        if not (np.isfinite(self.embedding_scale) and self.embedding_scale > 0):
            raise ValueError(
                f"embedding_scale must be a finite number > 0, got {self.embedding_scale}"
            )
        if not (np.isfinite(self.rating_weight) and self.rating_weight >= 0):
            raise ValueError(
                f"rating_weight must be a finite number >= 0, got {self.rating_weight}"
            )
        if not (np.isfinite(self.tower_score_weight) and self.tower_score_weight >= 0):
            raise ValueError(
                f"tower_score_weight must be a finite number >= 0, got {self.tower_score_weight}"
            )

    def to_dict(self) -> dict:
        out = asdict(self)
        out["hidden_units"] = list(self.hidden_units)
        out["rating_units"] = list(self.rating_units)
        return out

    def embedding_dim(self, vocabulary: int) -> int:
        return max(2, int(np.ceil(self.embedding_scale * np.log2(vocabulary + 1))))


def tf_cdf(x: tf.Tensor, normalizer: QuantileNormalizer) -> tf.Tensor:
    """:class:`ranking.normalize.QuantileNormalizer` in TensorFlow (stock ops only), float32 out.

    Computed in float64, as numpy does at serving time: in float32, knots closer than its
    resolution (64 s apart at epoch-second magnitudes, or nearby tower scores) would collapse,
    and the network would be trained on other values than it is served."""
    x = tf.cast(tf.reshape(x, [-1]), tf.float64)
    knots = tf.constant(normalizer.knots, tf.float64)
    levels = tf.constant(normalizer.levels, tf.float64)
    top = tf.constant(ONE_BELOW, tf.float64)
    zero = tf.constant(0.0, tf.float64)
    if len(normalizer.knots) == 1:
        out = tf.where(x < knots[0], zero, tf.where(x > knots[0], top, 0.5))
    else:
        idx = tf.searchsorted(knots[None, :], x[None, :], side="right")[0]
        idx = tf.clip_by_value(idx, 1, len(normalizer.knots) - 1)
        x0, x1 = tf.gather(knots, idx - 1), tf.gather(knots, idx)
        l0, l1 = tf.gather(levels, idx - 1), tf.gather(levels, idx)
        t = tf.clip_by_value((x - x0) / (x1 - x0), 0.0, 1.0)  # knots strictly increase
        out = l0 + t * (l1 - l0)
        out = tf.where(x < knots[0], zero, tf.where(x > knots[-1], top, out))
    return tf.cast(tf.where(tf.math.is_nan(x), zero, tf.minimum(out, top)), tf.float32)


def genre_profile(history_genres, known, xp=np):
    """The share of a user's known history in each genre.

    Parameters
    ----------
    history_genres : array, shape (B, H, G)
        Multi-hot genres of each history slot (zero rows for padding and unknown items).
    known : array, shape (B, H)
        1 where the slot holds a known item, else 0.
    xp : module
        ``numpy`` or ``tf.experimental.numpy``: both run the same sums.

    Returns
    -------
    array, shape (B, G)
        All zero for a user without known history.
    """
    count = xp.maximum(xp.sum(known, axis=1, keepdims=True), 1.0)
    return xp.sum(history_genres * known[..., None], axis=1) / count


def genre_affinity(profile, candidate_genres, xp=np):
    """``[profile, profile * candidate_genres, affinity]``, shape (B, 2 * G + 1).

    ``profile`` (B, G) is :func:`genre_profile`'s, ``candidate_genres`` (B, G) multi-hot;
    ``affinity`` is the profile's mean over the candidate's genres (0 for a candidate without
    genres).
    """
    tagged = xp.maximum(xp.sum(candidate_genres, axis=1, keepdims=True), 1.0)
    matched = profile * candidate_genres
    affinity = xp.sum(matched, axis=1, keepdims=True) / tagged
    return xp.concatenate([profile, matched, affinity], axis=1)


def _expand(t: tf.Tensor) -> tf.Tensor:
    return tf.stack([t, t * t, tf.sqrt(t)], axis=1)


class Ranker(keras.Model):
    """Scores (user, candidate) pairs from raw inputs.

    Parameters
    ----------
    config : RankerConfig
    item_ids : sequence of str
        Item vocabulary (the tower's, so the two stages share it).
    item_genres : numpy.ndarray of float32, shape (len(item_ids), num_genres)
        Multi-hot genres per item.
    item_years : numpy.ndarray of float, shape (len(item_ids),)
        Release year per item (NaN if unknown).
    normalizers : mapping of str to QuantileNormalizer
        One per name in :data:`ranking.impressions.NUMERIC` plus ``year``.
    demographic_vocabularies : mapping, optional
    """

    def __init__(
        self,
        config: RankerConfig,
        item_ids: Sequence[str],
        item_genres: np.ndarray,
        item_years: np.ndarray,
        normalizers: Mapping[str, QuantileNormalizer],
        demographic_vocabularies: Mapping[str, list[str]] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.item_ids = UntrackedList(str(i) for i in item_ids)
        self.normalizers = dict(normalizers)
        n = len(self.item_ids)
        self.item_lookup = keras.layers.StringLookup(
            vocabulary=self.item_ids, mask_token="", num_oov_indices=1, name="item_lookup"
        )
        dim = config.embedding_dim(n)
        # Rows 0 (pad) and 1 (unknown) are zeroed at every call: OOV maps to zero.
        self.item_embedding = keras.layers.Embedding(n + 2, dim, name="item_embedding")
        self.item_bias = keras.layers.Embedding(
            n + 2, 1, embeddings_initializer="zeros", name="item_bias"
        )
        self.rated_embedding = (
            keras.layers.Embedding(n + 2, dim, name="rated_embedding") if config.rated_bag else None
        )
        genres = np.zeros((n + 2, item_genres.shape[1]), np.float32)
        genres[2:] = item_genres
        self.genre_table = tf.constant(genres)
        years = np.full(n + 2, np.nan, np.float32)
        years[2:] = item_years
        self.year_table = tf.constant(years)
        self.item_genre_array = np.asarray(item_genres, np.float32)
        self.item_year_array = np.asarray(item_years, np.float32)
        self.demographic_vocabularies = dict(demographic_vocabularies or {})
        self.demographic_lookups, self.demographic_embeddings = {}, {}
        for col, vocab in self.demographic_vocabularies.items():
            self.demographic_lookups[col] = keras.layers.StringLookup(
                vocabulary=vocab, num_oov_indices=1, name=f"{col}_lookup"
            )
            self.demographic_embeddings[col] = keras.layers.Embedding(
                len(vocab) + 1, config.embedding_dim(len(vocab)), name=f"{col}_embedding"
            )
        self.dropout = keras.layers.Dropout(config.dropout)
        self.rank_tower = [keras.layers.Dense(u, activation="relu") for u in config.hidden_units]
        self.rank_out = keras.layers.Dense(1, name="logit")
        self.rating_tower = [keras.layers.Dense(u, activation="relu") for u in config.rating_units]
        self.rating_out = keras.layers.Dense(1, name="rating")

    def _embed(self, ids: tf.Tensor) -> tf.Tensor:
        mask = tf.cast(ids >= 2, tf.float32)[..., None]
        return self.item_embedding(ids) * mask

    def _rated_bag(self, history: tf.Tensor, ratings: tf.Tensor | None) -> tf.Tensor:
        """``sum_j (r_j - mean r) y_j / sqrt(n)`` over the rated history items, ``y`` the rated
        table (Koren's asymmetric-SVD user factor, with no per-user parameter)."""
        if ratings is None:
            ratings = tf.fill(tf.shape(history), float("nan"))
        ratings = tf.cast(ratings, tf.float32)
        rated = tf.logical_and(~tf.math.is_nan(ratings), history >= 2)
        weight = tf.cast(rated, tf.float32)
        count = tf.reduce_sum(weight, 1, keepdims=True)
        values = tf.where(rated, ratings, 0.0)
        mean = tf.reduce_sum(values, 1, keepdims=True) / tf.maximum(count, 1.0)
        deviation = (values - mean) * weight
        vectors = self.rated_embedding(history)
        return tf.reduce_sum(vectors * deviation[..., None], 1) / tf.sqrt(tf.maximum(count, 1.0))

    def call(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> dict:
        """``{"logit", "serving_logit", "rating"}``, each ``[B]``, from raw inputs (see
        :func:`ranking.train.ranker_inputs`). ``logit`` is the trained ranking head;
        ``serving_logit`` adds ``tower_score_weight * tower_score`` (:class:`RankerConfig`)."""
        item = self.item_lookup(tf.reshape(tf.convert_to_tensor(inputs["item_id"]), [-1]))
        history = self.item_lookup(tf.convert_to_tensor(inputs["history"]))
        known = tf.cast(history >= 2, tf.float32)[..., None]
        bag = tf.reduce_sum(self._embed(history) * known, 1) / tf.maximum(
            tf.reduce_sum(known, 1), 1.0
        )
        item_vec = self._embed(item)
        dot = tf.reduce_sum(item_vec * bag, axis=1, keepdims=True)
        shared = [item_vec, bag, dot, tf.gather(self.genre_table, item)]
        year = tf.gather(self.year_table, item)
        shared.append(_expand(tf_cdf(year, self.normalizers["year"])))
        for name in RATING_FEATURES:
            shared.append(_expand(tf_cdf(inputs[name], self.normalizers[name])))
        user_mean = tf.reshape(tf.cast(inputs["user_mean"], tf.float32), [-1, 1])
        shared.append(tf.where(tf.math.is_nan(user_mean), 0.0, user_mean / 5.0))
        for col in self.demographic_vocabularies:
            ids = self.demographic_lookups[col](tf.reshape(tf.convert_to_tensor(inputs[col]), [-1]))
            # Index 0 is the OOV bucket (unknown or missing value): it embeds to zero.
            mask = tf.cast(ids > 0, tf.float32)[:, None]
            shared.append(self.demographic_embeddings[col](ids) * mask)
        shared = tf.concat(shared, axis=1)
        ranking = [shared] + [
            _expand(tf_cdf(inputs[name], self.normalizers[name]))
            for name in NUMERIC
            if name not in RATING_FEATURES
        ]
        if self.config.user_genres:
            profile = genre_profile(tf.gather(self.genre_table, history), known[..., 0], tnp)
            ranking.append(genre_affinity(profile, tf.gather(self.genre_table, item), tnp))
        x = self.dropout(tf.concat(ranking, axis=1), training=training)
        for layer in self.rank_tower:
            x = layer(x)
        r = shared
        if self.rated_embedding is not None:
            rated_bag = self._rated_bag(history, inputs.get("history_rating"))
            rated_dot = tf.reduce_sum(item_vec * rated_bag, axis=1, keepdims=True)
            r = tf.concat([shared, rated_bag, rated_dot], axis=1)
        r = self.dropout(r, training=training)
        for layer in self.rating_tower:
            r = layer(r)
        low, high = RATING_RANGE
        z = self.rating_out(r)[:, 0] + self.item_bias(item)[:, 0] * tf.cast(item >= 2, tf.float32)
        logit = self.rank_out(x)[:, 0]
        return {
            "logit": logit,
            "serving_logit": self.serving_logit(logit, inputs["tower_score"]),
            "rating": low + (high - low) * tf.sigmoid(z),
        }

    def serving_logit(self, logit: tf.Tensor, tower_score) -> tf.Tensor:
        """``logit + tower_score_weight * tower_score`` (``logit`` alone at weight 0)."""
        beta = self.config.tower_score_weight
        if not beta:
            return logit
        return logit + beta * tf.reshape(tf.cast(tower_score, tf.float32), [-1])

    def get_config(self) -> dict:
        return {"ranker": self.config.to_dict(), "num_items": len(self.item_ids)}
