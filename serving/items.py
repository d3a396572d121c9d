"""Item lookups for the service: details by ID and title search."""

from __future__ import annotations

import functools
import math
import numbers
import re
import unicodedata

import pandas as pd

from serving.api_types import UnknownItemError
from towers.catalogue import genre_names

_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    """Lower-case words without accents, so that "Évil" finds "Evil" and "amelie" "Amélie"."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return _WORD.findall(plain.lower())


@functools.lru_cache(maxsize=1 << 17)
def _search_text(title: str) -> str:
    """A title's searchable words, joined. Remembered per title: a model swap or an added item
    rebuilds the catalogue, whose titles are almost all ones seen before, and normalising
    10,000 titles in Python holds the interpreter for about 0.1 s, beside live requests."""
    return " ".join(_words(title))


class ItemCatalogue:
    """Item metadata by raw ID, and a title search ranked by popularity.

    Parameters
    ----------
    items : pandas.DataFrame
        ``item_id``, ``title``, ``genres``; optional ``year`` and ``popularity``.
    """

    def __init__(self, items: pd.DataFrame) -> None:
        self._frame = items.reset_index(drop=True)
        self._build(self._frame)

    def add(self, items: pd.DataFrame) -> None:
        """Add items, or replace listed ones (same columns as the constructor's)."""
        keep = ~self._frame["item_id"].astype(str).isin(items["item_id"].astype(str))
        self._frame = pd.concat([self._frame[keep], items], ignore_index=True)
        self._build(self._frame)

    def _build(self, frame: pd.DataFrame) -> None:
        self._ids = frame["item_id"].astype(str).tolist()
        self._titles = frame["title"].fillna("").astype(str).tolist()
        self._genres = [genre_names(gs) for gs in frame["genres"].tolist()]
        years = frame["year"] if "year" in frame else pd.Series(math.nan, frame.index)
        self._years = [None if y != y else int(y) for y in years.astype(float).tolist()]
        pop = frame["popularity"] if "popularity" in frame else pd.Series(0.0, frame.index)
        self._popularity = pop.fillna(0.0).astype(float).tolist()
        self._row = {item: r for r, item in enumerate(self._ids)}
        self._title_words = [_search_text(t) for t in self._titles]
        # Most popular first, so that a search returns the film people mean.
        self._by_popularity = sorted(range(len(self._ids)), key=lambda r: -self._popularity[r])

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row

    def get(self, item_id: str) -> dict:
        """``item_id``, ``title``, ``genres``, ``year`` and ``popularity`` of one item.

        Raises
        ------
        UnknownItemError
            If the item is not in the catalogue.
        """
        row = self._row.get(str(item_id))
        if row is None:
            raise UnknownItemError(f"item_id {item_id!r} is not in the catalogue")
        return {
            "item_id": self._ids[row],
            "title": self._titles[row],
            "genres": list(self._genres[row]),
            "year": self._years[row],
            "popularity": self._popularity[row],
        }

    def title(self, item_id: str) -> str:
        row = self._row.get(str(item_id))
        return "" if row is None else self._titles[row]

    def search(self, query: str, limit: int = 20) -> list[dict]:
        """Items whose title contains every word of ``query`` (case-insensitive; each word may be
        a prefix, so "star wa" finds "Star Wars"), most popular first.

        Raises
        ------
        ValueError
            If ``query`` has no words or ``limit`` < 1.
        """
        words = _words(query)
        if not words:
            raise ValueError(f"q must contain at least one letter or digit, got {query!r}")
        if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1:
            raise ValueError(f"limit must be an integer >= 1, got {limit!r}")
        patterns = [re.compile(r"(?:^| )" + re.escape(w)) for w in words]
        out = []
        for row in self._by_popularity:
            text = self._title_words[row]
            if all(p.search(text) for p in patterns):
                out.append(self.get(self._ids[row]))
                if len(out) == limit:
                    break
        return out
