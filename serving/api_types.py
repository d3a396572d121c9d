"""The Python retrieval API's value types: a query, the recommendations it gets, and the error
for an item the model does not know.

:class:`serving.api.Recommender` takes :class:`Query` and returns :class:`Recommendations` of
:class:`Recommendation`; all three are frozen dataclasses.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field


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
