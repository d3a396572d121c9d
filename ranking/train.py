"""Training the ranker: options, inputs, normalisers and the Keras fit (its artefact
directory is :mod:`ranking.artefact`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ranking.ensemble import RankerEnsemble
from ranking.impressions import NUMERIC, RankingExamples
from ranking.model import Ranker, RankerConfig
from ranking.normalize import QuantileNormalizer
from towers._tf import keras, tf
from towers.checks import check_field_types
from towers.features import DEMOGRAPHIC_COLUMNS, UserFeatures

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class RankerOptions:
    """How to run ranker training (not part of the model)."""

    # 2: the best mean two-stage NDCG@10 gain over ml-latest-small and ml-100k of 1, 2 and 4
    # epochs on validation splits carved from train (results/tune_ranker.json).
    epochs: int = 2
    batch_size: int = 512
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    seed: int = 0
    verbose: int = 0
    schedule: str = "constant"  # or "cosine": decay to 0 over all epochs
    # Impression positives: the shown items among the user's next ``label_horizon`` watches
    # (see ranking.impressions.simulate_impressions).
    label_horizon: int = 1

    def __post_init__(self) -> None:
        check_field_types(self)
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.label_horizon < 1:
            raise ValueError(f"label_horizon must be >= 1, got {self.label_horizon}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}"
            )
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate}")
        if not (np.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")


# Impressions a ranker learns from, unless told otherwise: the generator's top 100 at up to 20
# events per user (ranking.pipeline.train_ranker_job).
IMPRESSION_DEFAULTS = {"num_candidates": 100, "events_per_user": 20}

# The serving settings picked for each MovieLens dataset on a temporal-user-20 split carved from
# train (benchmarks/ranking.py's ``serving_validation``; benchmarks/tune_ranker.py): the
# impression label horizon, the weight of the generator's score in the served score, and the
# number of rankers averaged (``RankerConfig.members``). Validation NDCG@10 gains over the
# candidate order:
# * horizon (at c122060, one ranker, with the user genre profile): ml-latest-small +11.4 % at
#   (30, 0.5) against -0.8 % at the paper's (1, 0); ml-100k +5.6 % at (30, 2) against +3.6 % at
#   (1, 0);
# * members (at cf942ed, horizon 30): ml-100k's single rankers of seeds 0 / 1 / 2 gained +5.6 /
#   +5.3 / +4.7 % (each at its best weight, 2), the mean of seeds 0 and 1 +7.1 % (at weight 1;
#   +7.2 % for all three, not worth a third training); ml-latest-small's seeds 0 / 1 +11.4 /
#   +8.6 % at weight 0.5, their mean +10.6 %. Two members are the served setting and weight 1
#   replaces 2 on ml-100k.
# * tower with mask_seen (at 038df89, two members, horizon 30): ml-latest-small +10.7 % at
#   weight 0.2 (+9.9 % at 0.5), ml-100k +2.8 % at 2 (+2.4 % at 1).
# * ml-latest-small's tower preset with 40 % history dropout at batch 512 (at 75d1807, two
#   members, horizon 30): +8.6 % at weight 0.5 (+8.3 % at 1, +7.0 % at 0.2).
# * ml-latest-small's preset trained 5 epochs on a cosine rate (at b6e4646, two members,
#   horizons 1 and 30): horizon 30, +3.6 % at weight 1 (+3.2 % at 2, +2.5 % at 0.5); horizon 1
#   lost at every weight (-1.1 % at best).
# * ml-latest-small's preset on every example of every user for 4 epochs (at 1853134, the same
#   run): horizon 30, +4.3 % at weight 1 (+4.1 % at 2, +4.0 % at 0.5); horizon 1 +0.3 % at best.
# * ml-latest-small's preset with a sampled softmax of 2,000 negatives for 5 epochs (at f8b93d5,
#   the same run): horizon 30, +3.8 % at weight 1 (+3.5 % at 0.5, +3.2 % at 0.2); horizon 1
#   lost at every weight (-0.4 % at best).
# (At f347754, without the genre profile: (30, 1) and (30, 2); at f3d85bc, before the ranker's
# rating and label fixes, ml-latest-small's pick was (30, 0.2); before mask_seen, with two
# members: 0.5 and 1.)
VALIDATED_LABEL_HORIZONS = {"ml-latest-small": 30, "ml-100k": 30}
VALIDATED_TOWER_SCORE_WEIGHTS = {"ml-latest-small": 1.0, "ml-100k": 2.0}
VALIDATED_MEMBERS = {"ml-latest-small": 2, "ml-100k": 2}
# Whether the new-user tower gets its own ranker, trained on new users' impressions
# (ranking.pipeline.train_new_user_ranker_job), picked on validation users by cold-user-5
# Recall@50 among both rankers at tower-score weights 0 to 8 (benchmarks/cold_plateau.py --parts
# served-cold-ranker, results/cold_plateau_cold_ranker.json, 2026-12-01): on ml-latest-small the
# new-user ranker at the served weight, 1.509x most-popular against 1.442x for the main ranker;
# on ml-100k the main ranker at weight 8, 1.357x, against 1.355x for the new-user ranker at the
# served weight (1.345x for the main ranker there). Other data: no ranker of its own (not measured).
VALIDATED_NEW_USER_RANKER = {"ml-latest-small": True, "ml-100k": False}


def validated_settings(dataset: str | None) -> tuple[RankerConfig, RankerOptions]:
    """The ranker configuration and training options validated for ``dataset`` (label horizon,
    tower-score weight and members); the defaults (the paper's next watch, one network, the
    head alone) for any other data."""
    name = dataset or ""
    config = RankerConfig(
        tower_score_weight=VALIDATED_TOWER_SCORE_WEIGHTS.get(name, 0.0),
        members=VALIDATED_MEMBERS.get(name, 1),
    )
    horizon = VALIDATED_LABEL_HORIZONS.get(name, RankerOptions().label_horizon)
    return config, RankerOptions(label_horizon=horizon)


def new_user_ranker_validated(dataset: str | None) -> bool:
    """Whether the new-user tower of a model of ``dataset`` gets its own ranker
    (:data:`VALIDATED_NEW_USER_RANKER`; False for any other data)."""
    return VALIDATED_NEW_USER_RANKER.get(dataset or "", False)


def learning_rate(
    options: RankerOptions, examples: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The optimiser's learning rate: constant, or cosine-decayed to 0 over every step of
    ``options.epochs`` epochs of ``examples`` rows."""
    if options.schedule == "constant":
        return options.learning_rate
    steps = options.epochs * max(1, -(-examples // options.batch_size))
    return keras.optimizers.schedules.CosineDecay(options.learning_rate, steps)


def genre_matrix(items: pd.DataFrame, item_ids: list[str]) -> tuple[list[str], np.ndarray]:
    """Genre names and a multi-hot ``(len(item_ids), num_genres)`` matrix aligned with
    ``item_ids`` (items without metadata get zeros)."""
    meta = items.assign(item_id=items["item_id"].astype(str)).set_index("item_id")
    genres = sorted({g for gs in meta["genres"] for g in gs})
    column = {g: j for j, g in enumerate(genres)}
    out = np.zeros((len(item_ids), len(genres)), np.float32)
    present = meta.reindex(item_ids)["genres"]
    for row, gs in enumerate(present):
        if isinstance(gs, list | tuple | np.ndarray):
            for g in gs:
                out[row, column[g]] = 1.0
    return genres, out


def ranker_inputs(
    examples: RankingExamples, users: UserFeatures | None = None, ratings: bool = True
) -> dict[str, np.ndarray]:
    """The raw input dict of :class:`ranking.model.Ranker` for ``examples`` (``ratings=False``
    leaves out ``history_rating``, which only a ranker with a rated bag reads)."""
    inputs: dict[str, np.ndarray] = {
        "item_id": examples.item_id.astype(str),
        "history": examples.history.astype(str),
        **{name: examples.numeric[name].astype(np.float32) for name in NUMERIC},
    }
    if ratings:
        inputs["history_rating"] = examples.history_ratings().astype(np.float32)
    if users is not None:
        demo = users.lookup(examples.user_id)
        for col in DEMOGRAPHIC_COLUMNS:
            inputs[col] = demo[col].astype(str)
    return inputs


def fit_normalizers(
    examples: RankingExamples, item_years: np.ndarray, num_quantiles: int
) -> dict[str, QuantileNormalizer]:
    """One CDF per continuous feature, fitted on the training rows (NaN-only features, such as
    the generator's score in rating-only training, get a constant CDF)."""
    out = {}
    for name in NUMERIC:
        values = examples.numeric[name]
        finite = values[np.isfinite(values)]
        out[name] = QuantileNormalizer.fit(finite if finite.size else np.zeros(1), num_quantiles)
    years = item_years[np.isfinite(item_years)]
    out["year"] = QuantileNormalizer.fit(years if years.size else np.zeros(1), num_quantiles)
    return out


class _Trainer(keras.Model):
    """Wraps a Ranker with the two losses: weighted logistic regression on impression rows
    (label not NaN) plus ``rating_weight`` x squared error on rows with a rating."""

    def __init__(self, ranker: Ranker) -> None:
        super().__init__()
        self.ranker = ranker
        self.tracker = keras.metrics.Mean(name="loss")

    def call(self, inputs, training=False):
        return self.ranker(inputs, training=training)

    @property
    def metrics(self):
        return [self.tracker]

    def _loss(self, out, targets):
        label, weight, rating = targets["label"], targets["weight"], targets["rating"]
        has_label = tf.cast(~tf.math.is_nan(label), tf.float32)
        head = "serving_logit" if self.ranker.config.tower_score_offset else "logit"
        # Rating rows have no label, and no generator score for the offset: zeroed, not 0 * NaN.
        bce = tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.where(has_label > 0, label, 0.0),
            logits=tf.where(has_label > 0, out[head], 0.0),
        )
        w = weight * has_label
        rank = tf.reduce_sum(bce * w) / tf.maximum(tf.reduce_sum(w), 1.0)
        has_rating = ~tf.math.is_nan(rating)
        err = tf.where(
            has_rating, tf.square(out["rating"] - tf.where(has_rating, rating, 0.0)), 0.0
        )
        mse = tf.reduce_sum(err) / tf.maximum(tf.reduce_sum(tf.cast(has_rating, tf.float32)), 1.0)
        return rank + self.ranker.config.rating_weight * mse

    def train_step(self, data):
        inputs, targets = data
        with tf.GradientTape() as tape:
            loss = self._loss(self.ranker(inputs, training=True), targets)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables, strict=True))
        self.tracker.update_state(loss)
        return {"loss": self.tracker.result()}


def build_ranker(
    examples: RankingExamples,
    item_ids: list[str],
    items: pd.DataFrame,
    config: RankerConfig,
    users: pd.DataFrame | None = None,
) -> Ranker:
    """A Ranker whose vocabularies and normalisers come from the data."""
    genres, matrix = genre_matrix(items, item_ids)
    years = (
        items.assign(item_id=items["item_id"].astype(str))
        .set_index("item_id")
        .reindex(item_ids)["year"]
        .to_numpy(np.float32)
    )
    features = UserFeatures.from_frame(users)
    ranker = Ranker(
        config,
        item_ids,
        matrix,
        years,
        fit_normalizers(examples, years, config.num_quantiles),
        features.vocabularies() if features is not None else None,
    )
    ranker.genre_names = genres
    return ranker


def _sibling(ranker: Ranker) -> Ranker:
    """A new, untrained ranker with ``ranker``'s vocabularies and normalisers (fitted once
    for all the members of an ensemble)."""
    sibling = Ranker(ranker.config, ranker.item_ids, ranker.item_genre_array,
                     ranker.item_year_array, ranker.normalizers,
                     ranker.demographic_vocabularies or None)  # fmt: skip
    sibling.genre_names = ranker.genre_names
    return sibling


def train_ranker(
    examples: RankingExamples,
    item_ids: list[str],
    items: pd.DataFrame,
    config: RankerConfig | None = None,
    options: RankerOptions | None = None,
    users: pd.DataFrame | None = None,
) -> tuple[Ranker | RankerEnsemble, dict]:
    """Fit a ranker on ``examples``: one :class:`Ranker`, or with ``config.members > 1`` a
    :class:`ranking.ensemble.RankerEnsemble` whose member ``m`` is trained with seed
    ``options.seed + m``. Returns the model and its training metrics (``loss`` per epoch,
    averaged over the members; ``member_loss`` each member's)."""
    config = config or RankerConfig()
    options = options or RankerOptions()
    if len(examples) == 0:
        raise ValueError("examples is empty: nothing to train the ranker on")
    start = time.perf_counter()
    inputs = ranker_inputs(examples, UserFeatures.from_frame(users), ratings=config.rated_bag)
    targets = {"label": examples.label, "weight": examples.weight, "rating": examples.rating}
    members, losses = [], []
    for m in range(config.members):
        seed = (options.seed + m) % 2**32
        tf.keras.utils.set_random_seed(seed)
        ranker = (
            _sibling(members[0])
            if members
            else build_ranker(examples, item_ids, items, config, users)
        )
        ds = (
            tf.data.Dataset.from_tensor_slices((inputs, targets))
            .shuffle(min(len(examples), 200_000), seed=seed)
            .batch(options.batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )
        trainer = _Trainer(ranker)
        trainer.compile(optimizer=keras.optimizers.AdamW(
            learning_rate(options, len(examples)), weight_decay=options.weight_decay
        ))  # fmt: skip
        loss = trainer.fit(ds, epochs=options.epochs, verbose=options.verbose).history["loss"]
        if not np.all(np.isfinite(loss)):
            raise ValueError(
                f"the ranker's training loss is not finite ({loss}): a non-finite label, "
                "weight or feature in the examples; no ranker is kept"
            )
        members.append(ranker)
        losses.append([round(float(v), 5) for v in loss])
    seconds = time.perf_counter() - start
    metrics = {
        "examples": len(examples),
        "impression_rows": int(np.isfinite(examples.label).sum()),
        "rating_rows": int(np.isfinite(examples.rating).sum()),
        "train_seconds": round(seconds, 2),
        "loss": [round(float(v), 5) for v in np.mean(losses, axis=0)],
    }
    if len(members) > 1:
        metrics["member_loss"] = losses
    log.info("ranker (%d member(s)) trained on %d rows in %.1f s", len(members), len(examples),
             seconds)  # fmt: skip
    return (members[0] if len(members) == 1 else RankerEnsemble(members)), metrics
