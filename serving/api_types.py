"""The Python retrieval API's value types: a query, the recommendations it gets, and the error
for an item the model does not know; and the checks of a query's arguments.

:class:`serving.api.Recommender` takes :class:`Query` (after :func:`checked`) and returns
:class:`Recommendations` of :class:`Recommendation`; all three are frozen dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from towers.catalogue import STATS
from towers.features import DEMOGRAPHIC_COLUMNS

#: The names a query's ``features`` may have.
FEATURES = ("age", *DEMOGRAPHIC_COLUMNS)


class UnknownItemError(KeyError):
    """An item ID that the model does not know, where an answer needs a known item."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class Recommendation:
    """One recommended item."""

    item_id: str
    score: float  # the softmax logit u . w_i + b_i
    title: str
    genres: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recommendations:
    """A ranked list for one query, with how the query was understood."""

    items: list[Recommendation]
    user_id: str | None = None
    known_user: bool = False
    ignored_history: list[str] = field(default_factory=list)
    ranked: bool = False  # True: ordered by the ranker (score = exp(logit)), else by the tower
    generator: str = "main"  # "new-user": the candidates came from the new-user tower

    def __iter__(self) -> Iterator[Recommendation]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def item_ids(self) -> list[str]:
        return [r.item_id for r in self.items]


@dataclass(frozen=True)
class Query:
    """One request of :meth:`serving.api.Recommender.recommend_batch`; fields as in
    ``recommend``."""

    user_id: str | None = None
    history: Sequence[str] | None = None
    features: Mapping[str, object] | None = None
    k: int = 10
    exclude: Sequence[str] = ()
    genres: Sequence[str] = ()
    exclude_seen: bool = True
    rank: bool = True
    stats: Mapping[str, float] | None = None  # rating_count, rating_mean, last_timestamp


def checked(query: Query) -> Query:
    """``query`` with a bare string ``exclude`` or ``genres`` read as one ID or genre (not as a
    sequence of characters), and both as tuples.

    Raises
    ------
    ValueError
        Naming ``exclude`` or ``genres`` when it is not a sequence, ``history`` when it is
        one string or not a sequence, and ``stats`` (:func:`check_stats`).
    TypeError
        Naming ``exclude_seen`` or ``rank`` when it is not a bool.
    """
    for name in ("exclude", "genres"):
        value = getattr(query, name)
        if not isinstance(value, Iterable):  # lists, tuples, sets, arrays, Series, ...
            raise ValueError(f"{name} must be a sequence of strings, got {value!r}")
    history = query.history
    if history is not None and (isinstance(history, str) or not isinstance(history, Iterable)):
        raise ValueError(f"history must be a sequence of item IDs, got {history!r}")
    for name in ("exclude_seen", "rank"):  # "False" would be true
        if not isinstance(getattr(query, name), bool | np.bool_):
            raise TypeError(f"{name} must be True or False, got {getattr(query, name)!r}")
    check_stats(query.stats)
    if type(query.exclude) is tuple and type(query.genres) is tuple:
        return query
    return dataclasses.replace(
        query, exclude=_as_tuple(query.exclude), genres=_as_tuple(query.genres)
    )


def check_stats(stats: Mapping[str, object] | None) -> None:
    """Check a query's rating ``stats``, which the ranker reads as they are.

    Raises
    ------
    ValueError
        If ``stats`` is not a mapping, names a statistic outside :data:`STATS`, or a value is
        not a finite number (``rating_count`` and ``last_timestamp`` also at least 0).
    """
    if stats is None:
        return
    if not isinstance(stats, Mapping):
        raise ValueError(f"stats must be a mapping of name to number, got {stats!r}")
    unknown = sorted(map(str, set(stats) - set(STATS)))
    if unknown:
        raise ValueError(f"stats has unknown names {unknown}; known: {list(STATS)}")
    for name, value in stats.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"stats[{name!r}] must be a number, got {value!r}")
        low = -math.inf if name == "rating_mean" else 0.0
        if not (math.isfinite(value) and value >= low):
            limit = "a finite number" if name == "rating_mean" else "a finite number >= 0"
            raise ValueError(f"stats[{name!r}] must be {limit}, got {value!r}")


def _as_tuple(value: Iterable) -> tuple:
    return (value,) if isinstance(value, str) else tuple(value)


def check_features(features: Mapping[str, object] | None) -> dict[str, object]:
    """A query's ``features`` as a dict, checked.

    Raises
    ------
    ValueError
        If ``features`` is not a mapping, has a name outside :data:`FEATURES`, or its ``age``
        is not a number in [0, 130].
    """
    if features is not None and not isinstance(features, Mapping):
        raise ValueError(f"features must be a mapping of name to value, got {features!r}")
    features = dict(features or {})
    unknown = sorted(set(features) - set(FEATURES))
    if unknown:
        raise ValueError(f"features has unknown names {unknown}; known: {list(FEATURES)}")
    age = features.get("age")
    if age is not None:
        if isinstance(age, bool) or not isinstance(age, numbers.Real) or not 0 <= age <= 130:
            raise ValueError(f"features['age'] must be a number in [0, 130], got {age!r}")
    return features
