"""The retrieval core shared by the Python API and the batch exporter.

Query features -> user vector (:class:`towers.query.QueryEncoder`) -> one ScaNN search over all
item vectors (:class:`towers.index.ItemIndex`) -> drop excluded items (seen, or asked) and items
outside an allowed set (a genre filter) -> the top ``k``.

Exclusions and filters are applied to the ranked neighbours, so a search fetches ``k`` plus
room for the items that will be dropped, and rows that come up short are searched again with a
wider fetch, up to the whole catalogue. On an exact (brute-force) index the result is therefore
exactly the top ``k`` of the allowed, unexcluded items; with a tree + hashing index it is the top
``k`` among what the searched partitions hold. A filter that allows at most half the catalogue
(and at most :data:`EXACT_AMONG_MAX` items) is instead scored exactly over its own items
(:meth:`towers.index.ItemIndex.search_among`): a rare genre's items are cheaper to score than
to dig out of a search of everything, and the answer is exact on any index.

Items placed from metadata (:meth:`Retriever.place`) can be held to a share of each list
(``max_placed``): a content projection's vectors are stretched to compete with trained ones, and
when a large part of the catalogue is placed at once they would otherwise fill most lists
(``benchmarks/bulk_items.py``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from towers.artefact import NEW_USER_DIR, load_query_encoder
from towers.checks import count_int
from towers.index import ItemIndex
from towers.query import QueryEncoder

#: The most allowed items a filtered search scores exactly (about one tree search's work).
EXACT_AMONG_MAX = 50_000


@dataclass(frozen=True)
class Retrieved:
    """Top items for one query, best first."""

    item_ids: list[str]
    scores: list[float]


#: The share of a list that items placed from metadata may take, by default (at least one item):
#: picked by ``benchmarks/bulk_items.py`` (README, "A bulk import of new items").
PLACED_SHARE = 0.1


def placed_cap(k: int, share: float | None) -> int | None:
    """How many of ``k`` items may be placed from metadata: ``floor(share * k)``, at least 1, so
    that one new item can always be recommended; None (no cap) for ``share`` None.

    Raises
    ------
    ValueError
        If ``share`` is not a number in [0, 1] (or None).
    """
    if share is None:
        return None
    if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0 <= share <= 1:
        raise ValueError(f"placed share must be a number in [0, 1] or None, got {share!r}")
    return max(1, math.floor(share * k + 1e-9))


def _keep(
    ids: Sequence[str] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    k: int,
    exclude: set[str],
    allowed: frozenset[str] | None,
    placed: frozenset[str] = frozenset(),
    max_placed: int | None = None,
) -> Retrieved:
    out_ids: list[str] = []
    out_scores: list[float] = []
    capped = max_placed is not None and bool(placed)
    taken = 0
    ids = ids.tolist() if isinstance(ids, np.ndarray) else ids
    scores = scores.tolist() if isinstance(scores, np.ndarray) else scores
    for item, score in zip(ids, scores, strict=True):
        if not item or item in exclude or (allowed is not None and item not in allowed):
            continue
        if capped and item in placed:
            if taken == max_placed:
                continue
            taken += 1
        out_ids.append(item)
        out_scores.append(score)
        if len(out_ids) == k:
            break
    return Retrieved(out_ids, out_scores)


def cap_placed(
    item_ids: Sequence[str],
    scores: Sequence[float],
    k: int,
    placed: frozenset[str],
    cap: int | None,
) -> tuple[list[str], list[float]]:
    """The first ``k`` of an ordered list with at most ``cap`` of the ``placed`` items (the
    rest of them dropped; None: no cap)."""
    if cap is None or not placed:
        return list(item_ids[:k]), list(scores[:k])
    kept = _keep(item_ids, scores, k, set(), None, placed, cap)
    return kept.item_ids, kept.scores


class Retriever:
    """Top-k items for raw query features.

    Parameters
    ----------
    encoder : QueryEncoder
    index : ItemIndex
        Its vectors are ``[w_i, b_i]``; queries are ``[u, 1]``.

    Attributes
    ----------
    placed : frozenset of str
        The items placed in the index from metadata since loading (:meth:`place`).
    """

    def __init__(self, encoder: QueryEncoder, index: ItemIndex) -> None:
        if index.dim != encoder.output_dim + 1:
            raise ValueError(
                f"index vectors have {index.dim} dimensions; the encoder's queries have "
                f"{encoder.output_dim + 1}"
            )
        self.encoder = encoder
        self.index = index
        self.placed: frozenset[str] = frozenset()

    def place(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Upsert vectors for items that the tower was not trained on (from the content
        projection) and remember them as placed, so that searches can cap them."""
        self.index.upsert(item_ids, vectors)
        # A new set, swapped in whole: searches running beside this read one set or the other.
        self.placed = self.placed | frozenset(map(str, item_ids))

    @classmethod
    def from_artefact(cls, directory: str | Path) -> Retriever:
        """The tower and index of an artefact directory (the index is rebuilt from
        ``item_vectors.npy`` if the artefact has none saved)."""
        directory = Path(directory)
        encoder = load_query_encoder(directory)
        if (directory / "index" / "index.json").exists():
            index = ItemIndex.load(directory / "index")
        else:
            ids = (directory / "vocab" / "items.txt").read_text(encoding="utf-8").splitlines()
            index = ItemIndex.build(ids, np.load(directory / "item_vectors.npy"))
        return cls(encoder, index)

    def retrieve(
        self,
        inputs: Mapping[str, np.ndarray],
        k: int,
        exclude: Sequence[set[str]] | None = None,
        allowed: frozenset[str] | None = None,
        max_placed: int | None = None,
    ) -> list[Retrieved]:
        """Top ``k`` items for each query row.

        Parameters
        ----------
        inputs : mapping
            Raw query features for ``n`` users (see :func:`towers.features.query_inputs`).
        k : int
            Items per user (>= 1). Fewer come back only when fewer items are eligible.
        exclude : sequence of set of str, optional
            Item IDs never to return, per user (seen items, explicit exclusions).
        allowed : frozenset of str, optional
            If given, only these items may be returned (e.g. the items of some genres).
        max_placed : int, optional
            At most this many of the items placed from metadata (:attr:`placed`) per row
            (:func:`placed_cap`); None: no cap.

        Returns
        -------
        list of Retrieved, one per row of ``inputs``
        """
        return self.search(self.encoder.queries(inputs), k, exclude, allowed, max_placed)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[set[str]] | None = None,
        allowed: frozenset[str] | None = None,
        max_placed: int | None = None,
    ) -> list[Retrieved]:
        """As :meth:`retrieve`, from ready index queries (shape ``(n, index.dim)``)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        max_placed = count_int("max_placed", max_placed, optional=True)
        placed = self.placed
        n = queries.shape[0]
        exclude = list(exclude) if exclude is not None else [set() for _ in range(n)]
        if len(exclude) != n:
            raise ValueError(f"exclude has {len(exclude)} entries for {n} queries")
        if any(isinstance(e, str | bytes) for e in exclude):  # "ABC" would exclude A, B and C
            raise TypeError("exclude must hold one set of item IDs per query, not a string")
        size = len(self.index)
        # Room for dropped items: most of a long history is not in the top k, so start with a
        # bounded margin and widen only the rows that come up short.
        longest = max((len(e) for e in exclude), default=0)
        if allowed is not None and len(allowed) <= min(EXACT_AMONG_MAX, size // 2):
            # k plus every excluded item (and every placed one past the cap): no row can come up
            # short while allowed items remain.
            capped = len(placed & allowed) if max_placed is not None else 0
            ids, scores = self.index.search_among(queries, k + longest + capped, allowed)
            return [
                _keep(r_ids, r_scores, k, exclude[row], None, placed, max_placed)
                for row, (r_ids, r_scores) in enumerate(zip(ids, scores, strict=True))
            ]
        fetch = min(size, k + min(longest, 3 * k))
        if allowed is not None:
            fetch = min(size, 4 * fetch)
        results: list[Retrieved | None] = [None] * n
        pending = np.arange(n)
        while len(pending):
            ids, scores = self.index.search(queries[pending], fetch)
            short = []
            for row, (r_ids, r_scores) in zip(pending, zip(ids, scores, strict=True), strict=True):
                got = _keep(r_ids, r_scores, k, exclude[row], allowed, placed, max_placed)
                results[row] = got
                if len(got.item_ids) < k and fetch < size:
                    short.append(row)
            pending = np.asarray(short, dtype=int)
            if len(pending):
                widest = max(len(exclude[r]) for r in pending)
                fetch = min(size, max(4 * fetch, k + widest))
        return [r for r in results if r is not None]


def new_user_retriever(directory: str | Path) -> Retriever | None:
    """The new-user tower of the artefact at ``directory`` (its ``new_user/``), if it has one."""
    second = Path(directory) / NEW_USER_DIR
    return Retriever.from_artefact(second) if (second / "config.json").exists() else None


def route(main: Retriever, new_user: Retriever | None, known: int, limit: int) -> Retriever:
    """The retriever that answers a history of ``known`` known items: ``new_user`` for at most
    ``limit`` of them (when there is one), else ``main``."""
    return new_user if new_user is not None and known <= limit else main
