"""SavedModels that answer new users as the service does: one model, routed per row.

An artefact that ``nextwatch serve`` trained has two towers: the main one and, in ``new_user/``,
the new-user preset, which answers every history of at most
:data:`towers.presets.NEW_USER_MAX_RATINGS` distinct known items (``serving.api.Recommender``).
A routed SavedModel holds both behind one ``serving_default`` signature: it counts each row's
distinct known items, sends the rows at or under the limit to the new-user tower's model and
the rest to the main tower's, and puts the answers back in request order. Each row is computed
by one tower only (the batch is split with ``tf.gather`` and joined with
``tf.dynamic_stitch``), so a batch costs what its rows would cost asked of each model alone.

The outputs are the wrapped models' (``item_ids``, ``scores``, ``model_version``) plus
``generator``, string ``[batch]``: ``"new-user"`` or ``"main"``, as the API's
``Recommendations.generator``. ``model_version`` is the artefact's version for both, as the
service reports it.
"""

from __future__ import annotations

from collections.abc import Callable

from export.bags import NO_ITEM_SCORE, distinct_known
from towers._tf import tf
from towers.checks import count_int
from towers.model import CandidateTower

Answer = Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]]


def check_new_user_max(value: object) -> None:
    """Raise ValueError naming ``new_user_max`` unless ``value`` is an integer >= 0 or None
    (None: no routing)."""
    count_int("new_user_max", value, optional=True)


def known_counts(model: CandidateTower, history: tf.Tensor) -> tf.Tensor:
    """Distinct items of each ``history`` row (string ``[batch, n]``) that ``model`` knows,
    int32 ``[batch]``: the count the API routes by (pads and unknown IDs do not count, and a
    repeated item counts once)."""
    keep = distinct_known(history, model.item_lookup(history) >= 2)
    return tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)


def _pad(answer: dict[str, tf.Tensor], width: int) -> dict[str, tf.Tensor]:
    """``item_ids`` and ``scores`` padded on the right to ``width`` columns (``""`` and
    :data:`export.bags.NO_ITEM_SCORE`, as a model pads a short answer)."""
    out = dict(answer)
    extra = width - tf.shape(answer["item_ids"])[1]
    out["item_ids"] = tf.pad(answer["item_ids"], [[0, 0], [0, extra]], constant_values="")
    out["scores"] = tf.pad(answer["scores"], [[0, 0], [0, extra]], constant_values=NO_ITEM_SCORE)
    return out


class RoutedModule(tf.Module):
    """Two answering modules behind one signature, routed per row by known-item count.

    Parameters
    ----------
    main, new_user : tf.Module
        The main tower's and the new-user tower's modules (``export.savedmodel`` or
        ``export.ranking_savedmodel`` modules; tracked, so that their variables are saved).
    main_answer, new_user_answer : callable
        Their answering functions: a request dict to ``item_ids`` ``[rows, k]``, ``scores``
        ``[rows, k]`` and ``model_version`` ``[rows]``.
    counter : CandidateTower
        The main tower, whose vocabulary decides which history items are known (as the API).
    limit : int
        The most known items a row may have to go to the new-user tower (>= 0).
    width : int
        Columns of the answer: the wider of the two models' ``k``.
    """

    def __init__(
        self,
        main: tf.Module,
        new_user: tf.Module,
        main_answer: Answer,
        new_user_answer: Answer,
        counter: CandidateTower,
        limit: int,
        width: int,
    ) -> None:
        super().__init__()
        if limit is None:
            raise ValueError("new_user_max must be an integer >= 0 to route, got None")
        check_new_user_max(limit)
        self.main, self.new_user = main, new_user
        self._answers = (main_answer, new_user_answer)
        self.counter = counter
        self.limit = limit
        self.width = width

    def answer(self, request: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        is_new = known_counts(self.counter, request["history"]) <= self.limit
        parts, rows = [], []
        for answer, chosen in zip(self._answers, (~is_new, is_new), strict=True):
            where = tf.cast(tf.reshape(tf.where(chosen), [-1]), tf.int32)
            sub = {name: tf.gather(value, where) for name, value in request.items()}
            # A model is not asked about no rows (ScaNN's search needs a query).
            parts.append(
                tf.cond(
                    tf.size(where) > 0,
                    lambda answer=answer, sub=sub: _pad(answer(sub), self.width),
                    lambda: self._empty(),
                )
            )
            rows.append(where)
        out = {
            name: tf.dynamic_stitch(rows, [part[name] for part in parts])
            for name in ("item_ids", "scores", "model_version")
        }
        out["generator"] = tf.where(is_new, "new-user", "main")
        return out

    def _empty(self) -> dict[str, tf.Tensor]:
        return {
            "item_ids": tf.zeros([0, self.width], tf.string),
            "scores": tf.zeros([0, self.width], tf.float32),
            "model_version": tf.zeros([0], tf.string),
        }
