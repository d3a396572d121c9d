"""The retrieval index: ScaNN over the softmax item vectors (with the bias folded in).

Covington et al. (2016), Sec. 3.2: serving the candidate generator is a nearest-neighbour search in
the dot-product space of the softmax, ``argmax_i u . w_i + b_i``. Each item is stored as
``[w_i, b_i]`` and each query as ``[u, 1]``, so one inner product is the full logit.

Small catalogues are scored exactly (ScaNN brute force); large ones use a k-means tree over the
items, anisotropic (score-aware) asymmetric hashing, and exact re-scoring of the best candidates
(Guo et al. 2020, "Accelerating Large-Scale Inference with Anisotropic Vector Quantization").
Items can be added, replaced and deleted in place (ScaNN's incremental ``upsert``/``delete``).

The index lives in ``towers`` rather than ``serving`` because all three consumers use it: the
Python API (``serving``), the batch exporter and the ScaNN SavedModel (``export``), and the
package arrows let ``export`` import ``towers`` but not ``serving``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

import towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before ScaNN imports TensorFlow)
from towers.checks import positive_int
from towers.index_params import IndexParams, configure
from towers.rwlock import ReadWriteLock

INDEX_FORMAT = 1
#: The most floats :meth:`ItemIndex.search_among` keeps of item subsets' vectors (64 MB).
SUBSET_CACHE_FLOATS = 1 << 24


def _check_unique(ids: list[str]) -> None:
    seen: set[str] = set()
    repeated = [i for i in ids if i in seen or seen.add(i)]
    if repeated:
        raise ValueError(f"item_ids has duplicates: {sorted(set(repeated))[:5]}")


def _scann():
    from scann.scann_ops.py import scann_ops_pybind

    return scann_ops_pybind


def _id_list(item_ids: Sequence[str]) -> list[str]:
    """``item_ids`` as a list of str; one string is refused (it would be read as its letters),
    and so is the empty ID, which :meth:`ItemIndex.search` pads short answers with."""
    if isinstance(item_ids, str | bytes):
        raise TypeError(f"item_ids must be a sequence of IDs, not one string: {item_ids!r}")
    ids = [str(i) for i in item_ids]
    if "" in ids:
        raise ValueError("item_ids has an empty ID (search pads short answers with '')")
    return ids


def _check_finite(vectors: np.ndarray, ids: Sequence[str] | None, what: str) -> None:
    """Raise ``ValueError`` naming the first rows of ``vectors`` with NaN or inf values."""
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(bad):
        named = [ids[i] for i in bad[:5]] if ids is not None else bad[:5].tolist()
        raise ValueError(f"{what} has NaN or infinite values in {len(bad)} row(s): {named}")


class ItemIndex:
    """Maximum-inner-product search over item vectors, keyed by raw item ID; thread-safe.

    Build with :meth:`build`, or :meth:`load` a saved one. Searches run concurrently; ``upsert``
    and ``delete`` wait for running searches and block new ones while they change the index.

    Parameters
    ----------
    searcher : scann_pybind.ScannNumpy
    item_ids : list of str
        Row ``i`` of the searcher is ``item_ids[i]``.
    vectors : numpy.ndarray of float32, shape (len(item_ids), dim)
        The indexed rows (``dim`` includes the folded-in bias).
    params : IndexParams
    """

    def __init__(
        self, searcher, item_ids: list[str], vectors: np.ndarray, params: IndexParams
    ) -> None:
        self._searcher = searcher
        self._ids = list(item_ids)
        # A copy of the rows, for looking up an item's vector (ScaNN does not give them back).
        self._vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._ids_array = np.asarray(self._ids, dtype=object)
        self._position = {item: i for i, item in enumerate(self._ids)}
        if len(self._position) != len(self._ids):
            _check_unique(self._ids)
        if len(self._vectors) != len(self._ids):
            raise ValueError(f"{len(self._ids)} item ids but {len(self._vectors)} vectors")
        _check_finite(self._vectors, self._ids, "the index's vectors")
        self.params = params
        self.dim = int(self._vectors.shape[1])
        self._lock = ReadWriteLock()
        # search_among's item subsets (IDs and vectors), keyed by the frozenset asked for.
        self._subsets: dict[frozenset, tuple[np.ndarray, np.ndarray]] = {}
        self._subset_floats = 0
        self._subset_lock = threading.Lock()

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls, item_ids: Sequence[str], vectors: np.ndarray, params: IndexParams | None = None
    ) -> ItemIndex:
        """Index ``vectors`` (shape ``(n, d)``, float32), row ``i`` under ``item_ids[i]``.

        Raises
        ------
        ValueError
            If the shapes disagree, the catalogue is empty, an ID repeats, or a vector has NaN
            or infinite values.
        TypeError
            If ``item_ids`` is one string.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = _id_list(item_ids)
        if vectors.ndim != 2 or vectors.shape[0] != len(ids) or vectors.shape[1] < 1:
            raise ValueError(
                f"vectors must have shape (len(item_ids), d) = ({len(ids)}, d >= 1), got "
                f"{vectors.shape}"
            )
        if not ids:
            raise ValueError("item_ids is empty: an index needs at least one item")
        _check_unique(ids)
        _check_finite(vectors, ids, "vectors")
        params = params or IndexParams.for_size(len(ids))
        builder = configure(_scann().builder(vectors, 10, "dot_product"), params)
        return cls(builder.build().searcher, ids, vectors, params)

    def save(self, directory: str | Path) -> Path:
        """Serialize the searcher and the ID list into ``directory`` (relative paths, movable)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock.read():
            self._searcher.serialize(str(directory), True)
            (directory / "ids.json").write_text(json.dumps(self._ids), encoding="utf-8")
            np.save(directory / "vectors.npy", self._vectors)
            meta = {"format": INDEX_FORMAT, "dim": self.dim, "params": asdict(self.params)}
            (directory / "index.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ItemIndex:
        """Load an index written by :meth:`save`.

        Raises
        ------
        FileNotFoundError
            If ``directory`` holds no saved index.
        """
        directory = Path(directory)
        if not (directory / "index.json").exists():
            raise FileNotFoundError(f"{directory} holds no saved item index (no index.json)")
        meta = json.loads((directory / "index.json").read_text())
        if meta.get("format") != INDEX_FORMAT:
            raise ValueError(f"{directory}: unsupported index format {meta.get('format')}")
        assets = (directory / "scann_assets.pbtxt").read_text()
        searcher = _scann().scann_pybind.ScannNumpy(str(directory), assets)
        ids = json.loads((directory / "ids.json").read_text(encoding="utf-8"))
        vectors = np.load(directory / "vectors.npy")
        return cls(searcher, ids, vectors, IndexParams(**meta["params"]))

    # ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self._position

    @property
    def item_ids(self) -> list[str]:
        """The indexed IDs (in searcher row order, which deletions permute)."""
        with self._lock.read():
            return list(self._ids)

    def vector(self, item_id: str) -> np.ndarray:
        """The indexed vector of ``item_id`` (a copy).

        Raises
        ------
        KeyError
            If the item is not indexed.
        """
        item_id = str(item_id)  # as upsert stores it
        with self._lock.read():
            if item_id not in self._position:
                raise KeyError(f"item id {item_id!r} is not in the index")
            return self._vectors[self._position[item_id]].copy()

    def vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """The indexed vectors of ``item_ids``, one row each, in their order (a copy).

        Raises
        ------
        KeyError
            If an item is not indexed (the first such ID is named).
        TypeError
            If ``item_ids`` is one string.
        """
        if isinstance(item_ids, str | bytes):  # it would be read as its letters
            raise TypeError(f"item_ids must be a sequence of IDs, not one string: {item_ids!r}")
        item_ids = [str(i) for i in item_ids]
        with self._lock.read():
            missing = [i for i in item_ids if i not in self._position]
            if missing:
                raise KeyError(f"item id {missing[0]!r} is not in the index")
            rows = np.fromiter((self._position[i] for i in item_ids), np.int64, len(item_ids))
            return self._vectors[rows]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items with the largest inner product for each query.

        Parameters
        ----------
        queries : numpy.ndarray of float32, shape (n, dim)
        k : int
            Capped at the catalogue size.

        Returns
        -------
        ids : numpy.ndarray of object (str), shape (n, min(k, len(self)))
        scores : numpy.ndarray of float32, same shape, descending along each row

        A tree index returns what its searched partitions hold; when a row has fewer than ``k``
        neighbours, its tail is padded with id ``""`` and score ``-inf``. Asking for more than
        the index re-scores (``k > reorder``) searches every partition.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {queries.shape}")
        k = positive_int("k", k)
        _check_finite(queries, None, "queries")
        if queries.shape[0] == 0:  # ScaNN refuses an empty batch
            width = min(int(k), len(self._ids))
            return np.full((0, width), "", dtype=object), np.full((0, width), -np.inf, np.float32)
        with self._lock.read():
            k = min(k, len(self._ids))
            pre, leaves = -1, -1
            if self.params.mode == "tree_ah" and k > self.params.reorder:
                pre, leaves = k, self.params.num_leaves
            out_ids = np.full((queries.shape[0], k), "", dtype=object)
            out_scores = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
            if queries.shape[0] == 1:
                rows, scores = self._searcher.search(queries[0], k, pre, leaves)
                rows, scores = np.asarray(rows)[None, :], np.asarray(scores)[None, :]
            else:
                rows, scores = self._searcher.search_batched(queries, k, pre, leaves, False, 0)
            # ScaNN pads short batched rows with row 0 and NaN scores: keep only real hits.
            valid = ~np.isnan(scores)
            width = rows.shape[1]
            out_ids[:, :width] = np.where(valid, self._ids_array[rows], "")
            out_scores[:, :width] = np.where(valid, scores, -np.inf)
            return out_ids, out_scores

    def search_among(
        self, queries: np.ndarray, k: int, item_ids: frozenset[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The exact top ``k`` by inner product among ``item_ids`` (those of them indexed).

        A filter (a genre's items) that keeps a small part of the catalogue is cheaper to score
        exactly than to find in a search of everything, which has to look deep past the items
        it drops; and the answer is exact on a tree index too. The subset's rows are kept
        (up to :data:`SUBSET_CACHE_FLOATS` floats in all) until the index changes.

        Returns
        -------
        ids, scores :
            As :meth:`search`'s, ``min(k, indexed items among item_ids)`` wide.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {queries.shape}")
        k = positive_int("k", k)
        _check_finite(queries, None, "queries")
        if not isinstance(item_ids, frozenset):
            item_ids = frozenset(item_ids)
        with self._lock.read():
            ids, vectors = self._subset(item_ids)
        k = min(k, len(ids))
        scores = queries @ vectors.T
        if k < len(ids):
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            scores = np.take_along_axis(scores, top, axis=1)
        else:
            top = np.broadcast_to(np.arange(len(ids)), scores.shape)
        order = np.lexsort((top, -scores), axis=-1)  # best first, ties in row order
        return ids[np.take_along_axis(top, order, axis=1)], np.take_along_axis(scores, order, 1)

    def _subset(self, item_ids: frozenset[str]) -> tuple[np.ndarray, np.ndarray]:
        """The indexed IDs among ``item_ids`` (in row order) and their vectors (under the read
        lock)."""
        found = self._subsets.get(item_ids)
        if found is not None:
            return found
        position = self._position
        rows = np.sort(np.fromiter((position[i] for i in item_ids if i in position), np.int64))
        found = (self._ids_array[rows], self._vectors[rows])
        size = found[1].size
        with self._subset_lock:  # searches run concurrently
            if size <= SUBSET_CACHE_FLOATS:
                if self._subset_floats + size > SUBSET_CACHE_FLOATS:
                    self._subsets, self._subset_floats = {}, 0
                self._subsets[item_ids] = found
                self._subset_floats += size
        return found

    def upsert(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add new items, or replace the vectors of indexed ones.

        Raises
        ------
        ValueError
            If ``vectors`` is not ``(len(item_ids), dim)`` or an ID repeats.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = _id_list(item_ids)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(
                f"vectors must have shape ({len(ids)}, {self.dim}), got {vectors.shape}"
            )
        _check_unique(ids)
        _check_finite(vectors, ids, "vectors")
        with self._lock.write():
            self._subsets, self._subset_floats = {}, 0
            rows = [self._position.get(i) for i in ids]
            self._searcher.upsert(rows, vectors, 1)  # new rows are appended in order
            for item in ids:
                if item not in self._position:
                    self._position[item] = len(self._ids)
                    self._ids.append(item)
            grown = len(self._ids) - len(self._vectors)
            if grown:
                self._vectors = np.concatenate(
                    [self._vectors, np.empty((grown, self.dim), np.float32)]
                )
            for item, vector in zip(ids, vectors, strict=True):
                self._vectors[self._position[item]] = vector
            self._ids_array = np.asarray(self._ids, dtype=object)

    def delete(self, item_ids: Sequence[str]) -> None:
        """Remove items. ScaNN moves the last row into a deleted one; the ID list follows.

        Raises
        ------
        KeyError
            If an ID is not indexed (nothing is deleted then).
        ValueError
            If it would delete every item.
        """
        ids = _id_list(item_ids)
        with self._lock.write():
            missing = [i for i in ids if i not in self._position]
            if missing:
                raise KeyError(f"item ids not in the index: {missing[:5]}")
            if len(set(ids)) >= len(self._ids):
                raise ValueError("cannot delete every item from the index")
            self._subsets, self._subset_floats = {}, 0
            for item in dict.fromkeys(ids):
                row = self._position.pop(item)
                last = len(self._ids) - 1
                self._searcher.delete([row])
                if row != last:
                    moved = self._ids[last]
                    self._ids[row] = moved
                    self._position[moved] = row
                    self._vectors[row] = self._vectors[last]
                self._ids.pop()
            self._vectors = self._vectors[: len(self._ids)].copy()
            self._ids_array = np.asarray(self._ids, dtype=object)
