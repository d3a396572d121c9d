"""What the API knows about each item besides its vector: title and genres, and the genre
filter's allowed sets."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from towers.catalogue import genre_names


class ItemLabels:
    """Titles and genres of a catalogue's items, and which items a genre filter allows.

    Parameters
    ----------
    items : pandas.DataFrame
        ``item_id``, ``title``, ``genres`` (sequence of str).
    """

    def __init__(self, items: pd.DataFrame) -> None:
        self._titles: dict[str, str] = {}
        self._genres: dict[str, tuple[str, ...]] = {}
        self.update(items)

    def update(self, items: pd.DataFrame) -> None:
        """Add or replace ``items``' titles and genres (same columns as the constructor's)."""
        # Whole columns to Python lists first (one conversion each, not one per element).
        ids = items["item_id"].astype(str).tolist()
        self._titles.update(zip(ids, items["title"].astype(str).tolist(), strict=True))
        self._genres.update(
            (i, genre_names(gs)) for i, gs in zip(ids, items["genres"].tolist(), strict=True)
        )
        by_genre: dict[str, set[str]] = {}
        for item, genres in self._genres.items():
            for genre in genres:
                by_genre.setdefault(genre.lower(), set()).add(item)
        self._genre_names = sorted({g for gs in self._genres.values() for g in gs})
        # Each genre's items, and one allowed set per filter asked for (so the index keeps its
        # rows, ItemIndex.search_among), replaced together: a filter built from the old sets
        # can only land in the old cache.
        self._genre_state: tuple[dict[str, frozenset[str]], dict] = (
            {g: frozenset(s) for g, s in by_genre.items()},
            {},
        )

    @property
    def genre_names(self) -> list[str]:
        """The genre names a filter may use."""
        return list(self._genre_names)

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self._titles

    def title(self, item_id: str) -> str:
        """The item's title ("" if unknown)."""
        return self._titles.get(str(item_id), "")

    def genres(self, item_id: str) -> tuple[str, ...]:
        """The item's genres (empty if unknown)."""
        return self._genres.get(str(item_id), ())

    def allowed(self, genres: Sequence[str]) -> frozenset[str] | None:
        """The items of any of ``genres`` (case-insensitive); None for no filter.

        Raises
        ------
        ValueError
            Naming the genres that no item has.
        """
        if isinstance(genres, str):
            genres = [genres]
        if not genres:
            return None
        by_genre, cache = self._genre_state
        names = frozenset(str(g).lower() for g in genres)
        found = cache.get(names)
        if found is not None:
            return found
        unknown = [g for g in genres if str(g).lower() not in by_genre]
        if unknown:
            raise ValueError(f"genres has unknown names {unknown}; known: {self._genre_names}")
        found = frozenset().union(*(by_genre[name] for name in names))
        if len(cache) < 256:
            cache[names] = found
        return found
