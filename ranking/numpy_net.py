"""The numpy pieces :class:`ranking.scorer.RankScorer` runs: one network's tables and layers
(and their arrays, read from a Keras network), its first layer split by what each input block
depends on, and the dense stack.

A serving request scores one user's candidates, so the user's blocks enter the first layer as
one row and each candidate's item-only blocks as a row of a table precomputed per model
(:class:`Split`); the pair's blocks are multiplied per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ranking.model import Ranker

#: What a block of the ranking head's input depends on: the item alone, the user alone (one row
#: per serving request), or the pair.
ITEM, USER, ROW = "item", "user", "row"
#: The largest item table (lookup positions x first-layer units, floats) :class:`Split` keeps;
#: past it the item blocks are multiplied per request.
MAX_ITEM_TABLE = 1 << 25


@dataclass
class Member:
    """One network's tables and layers, as :class:`ranking.scorer.RankScorer` runs them."""

    embedding: np.ndarray
    bias: np.ndarray
    demographics: dict[str, np.ndarray]
    rated: np.ndarray | None
    rank_layers: list[tuple[np.ndarray, np.ndarray, bool]]
    rating_layers: list[tuple[np.ndarray, np.ndarray, bool]]
    #: The first rank layer, split by what its inputs depend on (``RankScorer._rank_logit``).
    split: Split | None = None


@dataclass
class Split:
    """A first layer ``x W`` split by the kinds of ``x``'s column blocks: ``W``'s rows for the
    user's blocks (multiplied as one row), for the pair's (one row per candidate), and for the
    item's, whose products with every item are a table (one row per lookup position) when it
    is at most :data:`MAX_ITEM_TABLE` floats."""

    kinds: tuple[str, ...]
    kernels: dict[str, np.ndarray]
    item_table: np.ndarray | None

    @classmethod
    def of(cls, member: Member, blocks: list[tuple[np.ndarray, str]], item_features) -> Split:
        kernel = member.rank_layers[0][0]
        edges = np.cumsum([0, *(b.shape[1] for b, _ in blocks)])
        kinds = tuple(kind for _, kind in blocks)
        rows = {
            kind: np.concatenate(
                [np.arange(edges[i], edges[i + 1]) for i, k in enumerate(kinds) if k == kind]
            )
            for kind in set(kinds)
        }
        kernels = {kind: kernel[r] for kind, r in rows.items()}
        table = None
        if ITEM in kernels and len(member.embedding) * kernel.shape[1] <= MAX_ITEM_TABLE:
            features = item_features(member)
            if features.shape[1] != len(rows[ITEM]):  # the item blocks and their table disagree
                raise RuntimeError(
                    f"item features have {features.shape[1]} columns, not {len(rows[ITEM])}"
                )
            table = features.astype(np.float32) @ kernels[ITEM]
        return cls(kinds, kernels, table)

    def product(self, blocks: list[tuple[np.ndarray, str]], kind: str, n: int):
        """The first layer's share (no bias) from the blocks of one ``kind``: one row for the
        user's, ``n`` for the others (a block given as one row is the same for every row)."""
        if kind not in self.kernels:
            return 0.0
        rows = 1 if kind == USER else n
        picked = [
            b if len(b) == rows else np.broadcast_to(b, (rows, b.shape[1]))
            for b, k in blocks
            if k == kind
        ]
        return np.concatenate(picked, axis=1, dtype=np.float32) @ self.kernels[kind]

    def item_share(self, blocks: list[tuple[np.ndarray, str]], item: np.ndarray):
        """The item blocks' share for the candidates at lookup positions ``item``."""
        if self.item_table is None:
            return self.product(blocks, ITEM, len(item))
        return self.item_table[item]


def grown(table: np.ndarray, rows: int, fill: float = 0.0, double: bool = True) -> np.ndarray:
    """``table`` itself if it has ``rows`` rows, else a copy with ``rows`` rows (with
    ``double``, at least twice its rows), the new ones ``fill``."""
    if len(table) >= rows:
        return table
    size = max(rows, 2 * len(table)) if double else rows
    out = np.full((size, *table.shape[1:]), fill, table.dtype)
    out[: len(table)] = table
    return out


def columns(blocks: list[tuple[np.ndarray, str]], n: int) -> np.ndarray:
    """The arrays of ``blocks`` (1 or ``n`` rows each) side by side, as ``n`` float32 rows."""
    return np.concatenate(
        [np.broadcast_to(b, (n, b.shape[1])) for b, _ in blocks], axis=1, dtype=np.float32
    )


def dense(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray, bool]]) -> np.ndarray:
    """The layers on ``x``, each ``x @ kernel + bias`` (ReLU where marked), in place on the
    product (one array per layer)."""
    for kernel, bias, relu in layers:
        x = x @ kernel
        x += bias
        if relu:
            np.maximum(x, 0.0, out=x)
    return x


def _stack(prefix: str, layers) -> dict[str, np.ndarray]:
    out = {f"{prefix}_relu": np.array([layer.activation.__name__ == "relu" for layer in layers])}
    for i, layer in enumerate(layers):
        out[f"{prefix}_{i}/kernel"] = layer.kernel.numpy()
        out[f"{prefix}_{i}/bias"] = layer.bias.numpy()
    return out


def member_prefix(member: int) -> str:
    """The prefix of a member's arrays: none for the first (as a single ranker's), then
    ``member<m>/``."""
    return f"member{member}/" if member else ""


def member_arrays(ranker: Ranker) -> dict[str, np.ndarray]:
    """One Keras network's weights as the arrays a :class:`Member` is built from: embeddings
    (pad and unknown rows zeroed, as the model masks them), demographic tables (OOV row
    zeroed) and the two towers."""
    embedding = ranker.item_embedding.embeddings.numpy().copy()
    embedding[:2] = 0.0
    bias = ranker.item_bias.embeddings.numpy()[:, 0].copy()
    bias[:2] = 0.0
    arrays = {
        "item_embedding": embedding,
        "item_bias": bias,
        **_stack("rank", [*ranker.rank_tower, ranker.rank_out]),
        **_stack("rating", [*ranker.rating_tower, ranker.rating_out]),
    }
    if ranker.rated_embedding is not None:
        arrays["rated_embedding"] = ranker.rated_embedding.embeddings.numpy()
    for col in ranker.demographic_vocabularies:
        table = ranker.demographic_embeddings[col].embeddings.numpy().copy()
        table[0] = 0.0
        arrays[f"demographic/{col}"] = table
    return arrays
