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
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before ScaNN imports TensorFlow)
from towers.checks import positive_int

INDEX_FORMAT = 1


@dataclass(frozen=True)
class IndexParams:
    """How the index searches; :meth:`for_size` derives them from the catalogue size.

    Attributes
    ----------
    mode : {"brute_force", "tree_ah"}
    num_leaves : int
        k-means partitions (tree_ah only).
    leaves_to_search : int
        Partitions scanned per query.
    reorder : int
        Candidates re-scored exactly after hashing.
    dims_per_block : int
        Dimensions per asymmetric-hashing sub-space.
    anisotropic_threshold : float
        The score-aware quantization threshold ``T`` of Guo et al. (2020).
    training_sample_size : int
        Items sampled to train the tree and the codebooks.
    """

    mode: str = "brute_force"
    num_leaves: int = 0
    leaves_to_search: int = 0
    reorder: int = 0
    dims_per_block: int = 2
    anisotropic_threshold: float = 0.2
    training_sample_size: int = 250_000

    #: Up to this many items, exact scoring costs well under a millisecond on 2 cores.
    BRUTE_FORCE_MAX_ITEMS = 20_000

    @classmethod
    def for_size(cls, num_items: int, mode: str = "auto") -> IndexParams:
        """Parameters for a catalogue of ``num_items``.

        ``auto`` scores exactly up to :attr:`BRUTE_FORCE_MAX_ITEMS`. Above it, the tree has about
        ``sqrt(n)`` leaves of ~``sqrt(n)`` items (ScaNN's rule of thumb), searches 5 % of them
        (at least 8), and re-scores the top 1,000 exactly.
        """
        if mode not in ("auto", "brute_force", "tree_ah"):
            raise ValueError(f"mode must be 'auto', 'brute_force' or 'tree_ah', got {mode!r}")
        if mode == "brute_force" or (mode == "auto" and num_items <= cls.BRUTE_FORCE_MAX_ITEMS):
            return cls()
        leaves = max(2, min(int(round(math.sqrt(num_items))), num_items // 20))
        return cls(
            mode="tree_ah",
            num_leaves=leaves,
            leaves_to_search=min(leaves, max(8, int(math.ceil(0.05 * leaves)))),
            reorder=1000,
            training_sample_size=min(num_items, 250_000),
        )


class _ReadWriteLock:
    """Many concurrent searches, or one mutation (upsert/delete) at a time. A waiting writer
    holds back new readers, so steady search traffic cannot starve an update."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


def configure(builder, params: IndexParams):
    """Apply ``params`` to a ScaNN builder (``scann_ops_pybind`` or the TF ``scann_ops`` one)."""
    if params.mode == "tree_ah":
        return (
            builder.tree(
                num_leaves=params.num_leaves,
                num_leaves_to_search=params.leaves_to_search,
                training_sample_size=params.training_sample_size,
            )
            .score_ah(
                params.dims_per_block,
                anisotropic_quantization_threshold=params.anisotropic_threshold,
                training_sample_size=params.training_sample_size,
            )
            .reorder(params.reorder)
        )
    return builder.score_brute_force()


def _check_unique(ids: list[str]) -> None:
    seen: set[str] = set()
    repeated = [i for i in ids if i in seen or seen.add(i)]
    if repeated:
        raise ValueError(f"item_ids has duplicates: {sorted(set(repeated))[:5]}")


def _scann():
    from scann.scann_ops.py import scann_ops_pybind

    return scann_ops_pybind


def _id_list(item_ids: Sequence[str]) -> list[str]:
    """``item_ids`` as a list of str; one string is refused (it would be read as its letters)."""
    if isinstance(item_ids, str | bytes):
        raise TypeError(f"item_ids must be a sequence of IDs, not one string: {item_ids!r}")
    return [str(i) for i in item_ids]


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
        self._lock = _ReadWriteLock()

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
        if vectors.ndim != 2 or vectors.shape[0] != len(ids):
            raise ValueError(
                f"vectors must have shape (len(item_ids), d) = ({len(ids)}, d), got {vectors.shape}"
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
        return item_id in self._position

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
        with self._lock.read():
            if item_id not in self._position:
                raise KeyError(f"item id {item_id!r} is not in the index")
            return self._vectors[self._position[item_id]].copy()

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
