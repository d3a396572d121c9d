"""How the retrieval index searches (:class:`IndexParams`), and applying that to a ScaNN builder.

Shared by :class:`towers.index.ItemIndex` (ScaNN's pybind searcher) and the ScaNN SavedModel
(``export/savedmodel.py``, ScaNN's TF ops).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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
