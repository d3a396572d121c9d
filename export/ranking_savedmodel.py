"""SavedModels of the ranking stage, on raw inputs and stock TensorFlow ops only.

``ranker``     scores given (user, candidate) rows. Inputs, all ``[batch]`` except ``history``:
               ``item_id`` (string), ``history`` (string ``[batch, n]``), the continuous
               features ``tower_score``, ``tower_rank``, ``time_since_last`` (seconds),
               ``prev_impressions``, ``user_count``, ``user_mean``, ``item_popularity`` (float),
               and ``gender``, ``occupation``, ``zip_prefix`` for models with demographics;
               for rankers with a rated bag (``RankerConfig.rated_bag``) also
               ``history_rating`` (float ``[batch, n]``, each history item's rating). As in the
               service, the newest ``max_history`` known history items form the bag, a repeated
               item counting once, at its last position (with that position's rating).
               Outputs ``score`` (``exp(logit)``, the serving score), ``logit`` (the serving
               logit: the ranking head plus ``tower_score_weight`` times ``tower_score``),
               ``rating`` and ``model_version``.
``two_stage``  one call does both stages: the query tower, brute-force retrieval of
               ``num_candidates`` unseen items, the ranker over them, and the top ``k``.
               Inputs: the retrieval models' (``history`` and, with demographics, ``age``,
               ``gender``, ``occupation``, ``zip_prefix``) plus ``user_count``, ``user_mean`` and
               ``time_since_last`` (float ``[batch]``). Outputs ``item_ids``, ``scores``
               (``exp(logit)``) and ``model_version``, as ``nextwatch.serving.api`` with ranking.
               Where the artefact has a new-user tower, each row is routed as the API routes
               it (:mod:`export.routed`), and ``generator`` names the tower that answered.
``new_user_ranker``
               the new-user tower's own ranker (``new_user/ranker``), where it has one: the
               ``ranker`` model's inputs and outputs, for the new-user tower's candidates.

JSON has no NaN, so a negative ``user_mean``, ``time_since_last``, ``age`` or ``history_rating``
means "unknown" (``history_rating``: a watch without a rating, or padding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from export.routed import RoutedModule, check_new_user_max
from export.savedmodel import (
    NO_ITEM_SCORE,
    _BruteForceModule,
    _exists_message,
    _save,
    _signature,
    compact,
    distinct_known,
    saved_index,
)
from ranking.artefact import load_ranker
from ranking.ensemble import RankerEnsemble
from ranking.impressions import NUMERIC
from ranking.model import Ranker
from towers._tf import tf
from towers.artefact import NEW_USER_DIR, artefact_version, load_artefact
from towers.catalogue import ITEMS_FILE
from towers.index import ItemIndex
from towers.presets import NEW_USER_MAX_RATINGS

RANKING_MODELS = ("ranker", "two_stage")
UNKNOWN_IF_NEGATIVE = ("time_since_last", "user_mean")


def _unknown_if_negative(x: tf.Tensor) -> tf.Tensor:
    return tf.where(x < 0, tf.fill(tf.shape(x), float("nan")), x)


class _RankerModule(tf.Module):
    def __init__(self, ranker: Ranker | RankerEnsemble, version: str) -> None:
        super().__init__()
        self.ranker = ranker
        self.version = version

    def score(self, request: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        inputs = dict(request)
        for name in UNKNOWN_IF_NEGATIVE:
            inputs[name] = _unknown_if_negative(request[name])
        # The service's bag: a repeated item once, at its last position, and the newest
        # max_history known items; history_rating compacted alike, so it stays aligned.
        history, width = request["history"], self.ranker.config.max_history
        keep = distinct_known(history, self.ranker.item_lookup(history) >= 2)
        inputs["history"] = compact(history, keep, width, "")
        if "history_rating" in request:
            rating = compact(request["history_rating"], keep, width, -1.0)
            inputs["history_rating"] = _unknown_if_negative(rating)
        out = self.ranker(inputs)
        return {
            "score": tf.exp(out["serving_logit"]),
            "logit": out["serving_logit"],
            "rating": out["rating"],
            "model_version": tf.fill([tf.shape(out["logit"])[0]], self.version),
        }


def _ranker_signature(ranker: Ranker | RankerEnsemble) -> dict[str, tf.TensorSpec]:
    spec = {
        "item_id": tf.TensorSpec([None], tf.string, name="item_id"),
        "history": tf.TensorSpec([None, None], tf.string, name="history"),
        **{name: tf.TensorSpec([None], tf.float32, name=name) for name in NUMERIC},
    }
    for col in ranker.demographic_vocabularies:
        spec[col] = tf.TensorSpec([None], tf.string, name=col)
    if ranker.config.rated_bag:
        spec["history_rating"] = tf.TensorSpec([None, None], tf.float32, name="history_rating")
    return spec


class _TwoStageModule(_BruteForceModule):
    def __init__(
        self, model, version, index: ItemIndex, ranker: Ranker | RankerEnsemble, popularity, n, k
    ):
        # As the API: at least k candidates, so that k > n still returns k items.
        super().__init__(model, version, max(n, k), index)
        self.ranker = ranker
        self.final_k = min(k, self.k)
        self.popularity = tf.constant(
            np.array([popularity.get(i, 0.0) for i in index.item_ids], np.float32)
        )

    def two_stage(self, request: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        retrieved = self.top_k(request)  # [B, N] unseen candidates by tower logit
        ids, tower_scores = retrieved["item_ids"], retrieved["scores"]
        batch, n = tf.shape(ids)[0], tf.shape(ids)[1]
        history = request["history"]
        keep = distinct_known(history, self.model.item_lookup(history) >= 2)
        history = compact(history, keep, self.ranker.config.max_history, "")

        def per_row(x: tf.Tensor) -> tf.Tensor:  # [B] -> [B * N]
            return tf.reshape(tf.repeat(x[:, None], n, axis=1), [-1])

        rows = tf.maximum(self.item_rows.lookup(tf.reshape(ids, [-1])), 0)
        inputs = {
            "item_id": tf.reshape(ids, [-1]),
            "history": tf.repeat(history, n, axis=0),
            "tower_score": tf.reshape(tower_scores, [-1]),
            "tower_rank": tf.reshape(
                tf.tile(tf.range(1.0, tf.cast(n, tf.float32) + 1.0)[None], [batch, 1]), [-1]
            ),  # fmt: skip
            "time_since_last": per_row(_unknown_if_negative(request["time_since_last"])),
            "prev_impressions": tf.zeros([batch * n]),
            "user_count": per_row(request["user_count"]),
            "user_mean": per_row(_unknown_if_negative(request["user_mean"])),
            "item_popularity": tf.gather(self.popularity, rows),
        }
        for col in self.ranker.demographic_vocabularies:
            inputs[col] = per_row(request[col])
        logits = tf.reshape(self.ranker(inputs)["serving_logit"], [batch, n])
        logits = tf.where(ids == "", float("-inf"), logits)
        top = tf.math.top_k(logits, k=tf.minimum(self.final_k, n))
        valid = top.values > float("-inf")
        return {
            "item_ids": tf.where(valid, tf.gather(ids, top.indices, batch_dims=1), ""),
            "scores": tf.where(valid, tf.exp(top.values), NO_ITEM_SCORE),
            "model_version": retrieved["model_version"],
        }


def export_ranking_savedmodels(
    artefact: str | Path,
    output: str | Path,
    k: int = 10,
    num_candidates: int = 100,
    serving_version: int = 1,
    overwrite: bool = False,
    new_user_max: int | None = NEW_USER_MAX_RATINGS,
) -> dict[str, Path]:
    """Export ``output/ranker/<v>`` and ``output/two_stage/<v>`` for an artefact with a ranker.

    Each version directory is written beside its place and renamed into it when complete (see
    :func:`export.savedmodel.export_savedmodels`). ``two_stage`` retrieves
    ``max(num_candidates, k)`` candidates, as the Python API does.

    Where the artefact has a new-user tower (``new_user/``), ``two_stage`` routes each row as
    the API does (:mod:`export.routed`): a history of at most ``new_user_max`` distinct known
    items gets the new-user tower's candidates, rescored by its own ranker
    (``new_user/ranker``) if it has one, else by the main ranker; the output ``generator``
    names the tower. An own ranker is also exported alone, as ``new_user_ranker``. None for
    ``new_user_max`` exports the main tower and ranker alone.

    Raises
    ------
    FileNotFoundError
        If the artefact has no ``ranker/`` (train one with ``nextwatch train-ranker``).
    FileExistsError
        If a version directory exists and ``overwrite`` is false (checked before writing).
    ValueError
        On a bad argument, or a ranker trained for another version of its tower.
    """
    for name, value in (("k", k), ("num_candidates", num_candidates),
                        ("serving_version", serving_version)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    check_new_user_max(new_user_max)
    artefact = Path(artefact)
    if not (artefact / "ranker" / "config.json").exists():
        raise FileNotFoundError(f"{artefact} has no ranker/: run `nextwatch train-ranker` first")
    second = artefact / NEW_USER_DIR
    routed = new_user_max is not None and (second / "config.json").exists()
    own = routed and (second / "ranker" / "config.json").exists()
    names = (*RANKING_MODELS, *(("new_user_ranker",) if own else ()))
    output = Path(output)
    if not overwrite:
        for name in names:
            if (output / name / str(serving_version)).exists():
                raise FileExistsError(_exists_message(output / name / str(serving_version)))
    version = artefact_version(artefact)
    ranker = _checked_ranker(artefact, version, artefact)
    # Both rankers are checked before anything is written.
    second_ranker = _checked_ranker(second, artefact_version(second), artefact) if own else ranker
    model = load_artefact(artefact)
    index = saved_index(artefact, model)
    popularity: dict[str, float] = {}
    if (artefact / ITEMS_FILE).exists():
        items = pd.read_parquet(artefact / ITEMS_FILE)
        if "popularity" in items:  # else 0 for every item, as the API does
            popularity = dict(zip(items["item_id"].astype(str), items["popularity"], strict=True))
    out = {"ranker": _save_ranker(ranker, version, output / "ranker" / str(serving_version),
                                  overwrite)}  # fmt: skip
    two = _TwoStageModule(model, version, index, ranker, popularity, num_candidates, k)
    spec = _signature(model)
    answer, module = two.two_stage, two
    if routed:
        new_user_model = load_artefact(second)
        if own:
            out["new_user_ranker"] = _save_ranker(
                second_ranker, version, output / "new_user_ranker" / str(serving_version),
                overwrite,
            )  # fmt: skip
        # The new-user tower's answers carry the artefact's version, as the service's do.
        two_second = _TwoStageModule(
            new_user_model, version, saved_index(second, new_user_model), second_ranker,
            popularity, num_candidates, k,
        )  # fmt: skip
        module = RoutedModule(
            two, two_second, two.two_stage, two_second.two_stage, model, new_user_max,
            max(two.final_k, two_second.final_k),
        )  # fmt: skip
        answer = module.answer
        spec = {**_signature(new_user_model), **spec}
    for name in ("user_count", "user_mean", "time_since_last"):
        spec[name] = tf.TensorSpec([None], tf.float32, name=name)
    out["two_stage"] = output / "two_stage" / str(serving_version)
    _save(module, answer, out["two_stage"], spec=spec, overwrite=overwrite)
    return out


def _checked_ranker(directory: Path, version: str, artefact: Path) -> Ranker | RankerEnsemble:
    """``directory/ranker``, refused (naming it) if it was trained for another tower version
    than ``version``; ``artefact`` names the artefact to retrain."""
    ranker = load_ranker(directory / "ranker")
    if ranker.tower_version != version:
        raise ValueError(
            f"{directory / 'ranker'} was trained for tower {ranker.tower_version}, not "
            f"{version}: retrain it (nextwatch train-ranker --artefact {artefact})"
        )
    return ranker


def _save_ranker(ranker: Ranker | RankerEnsemble, version: str, path: Path, overwrite: bool):
    module = _RankerModule(ranker, version)
    return _save(module, module.score, path, spec=_ranker_signature(ranker), overwrite=overwrite)
