"""Serving-time user vectors: the tower's inference pass in numpy.

A user vector is computed at request time from the user's history and features (there is no
per-user parameter). Calling the Keras tower for one user costs ~5 ms on 2 CPU cores (most of
it the per-call token-bag average over the whole vocabulary and Keras dispatch), which alone
would break the 1 ms retrieval budget. :class:`QueryEncoder` takes the trained weights once,
precomputes each item's token bag, and runs the same arithmetic as
:meth:`towers.model.CandidateTower.call` (``training=False``) in numpy, in ~50 µs.
``tests/towers/test_query.py`` checks it against the Keras model to float precision; the
SavedModels in ``export`` run the Keras graph itself. Its arrays are saved in every artefact
(``serving.npz``), so a server loads and hot-swaps a model without TensorFlow building it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from towers.features import DEMOGRAPHIC_COLUMNS, age_hats
from towers.model import CandidateTower, TowerConfig


def _masked_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean of ``values`` [n, L, d] over L with 0/1 ``weights`` [n, L]; 0 where none."""
    w = weights.astype(np.float32)
    total = np.einsum("nl,nld->nd", w, values)
    return total / np.maximum(w.sum(axis=1, keepdims=True), 1.0)


def named_array(
    arrays: Mapping[str, np.ndarray], name: str, owner: str, rows: int | None = None
) -> np.ndarray:
    """``arrays[name]``, checked to be there and, if ``rows`` is given, to have that many rows.

    Raises
    ------
    ValueError
        Naming ``owner`` (whose arrays these are) and the array.
    """
    if name not in arrays:
        raise ValueError(f"{owner} array {name!r} is missing")
    array = arrays[name]
    if rows is not None and len(array) != rows:
        raise ValueError(f"{owner} array {name!r} has {len(array)} rows, expected {rows}")
    return array


class QueryEncoder:
    """User vectors from the raw query dict of :func:`towers.features.query_inputs`.

    Built from a trained tower (:meth:`from_model`) or from the plain arrays it was saved as
    (:attr:`arrays`; ``towers.artefact`` writes them into every artefact), so that a server can load
    a model without TensorFlow building anything.

    Parameters
    ----------
    config : TowerConfig
    item_ids : sequence of str
        The tower's item vocabulary (lookup position ``i + 2``).
    arrays : mapping of str to ndarray
        ``history_embedding``; ``token_bags`` if the tower uses tokens; ``demographic/<col>`` per
        demographic column; ``dense_<i>/kernel`` and ``dense_<i>/bias`` per layer, and
        ``dense_relu`` (bool, one per layer).
    demographic_vocabularies : mapping of str to sequence of str
        Per column, the vocabulary (lookup row ``i + 1``; row 0 is unknown).

    Raises
    ------
    ValueError
        If the arrays do not fit the config and vocabularies (naming the array).
    """

    def __init__(
        self,
        config: TowerConfig,
        item_ids: Sequence[str],
        arrays: Mapping[str, np.ndarray],
        demographic_vocabularies: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.config = config
        self.max_history = config.max_history
        self.output_dim = config.output_dim
        self.arrays = {name: np.asarray(a) for name, a in arrays.items()}
        # Lookup positions: 0 pad, 1 OOV, item i at i + 2 (as the model's StringLookup).
        self._item_position = {item: i + 2 for i, item in enumerate(item_ids)}
        self._item_position[""] = 0
        self._history_embedding = self._array("history_embedding", rows=len(item_ids) + 2)
        self._token_bags = (
            self._array("token_bags", rows=len(item_ids) + 2)
            if "token_bags" in self.arrays
            else None
        )
        self._demographics = {
            # StringLookup without a mask: OOV is row 0, vocab[i] is row i + 1.
            col: (
                {v: i + 1 for i, v in enumerate(vocab)},
                self._array(f"demographic/{col}", rows=len(vocab) + 1),
            )
            for col, vocab in (demographic_vocabularies or {}).items()
        }
        relu = self._array("dense_relu")
        self._layers = [
            (self._array(f"dense_{i}/kernel"), self._array(f"dense_{i}/bias"), bool(r))
            for i, r in enumerate(relu)
        ]
        if not self._layers or self._layers[-1][0].shape[1] != config.output_dim:
            raise ValueError(f"the query tower's last layer does not output {config.output_dim}")

    def _array(self, name: str, rows: int | None = None) -> np.ndarray:
        return named_array(self.arrays, name, "query encoder", rows)

    @classmethod
    def from_model(cls, model: CandidateTower) -> QueryEncoder:
        """The encoder of a trained (built) tower; its weights are copied, so later training
        does not leak in."""
        arrays: dict[str, np.ndarray] = {
            "history_embedding": model.history_embedding.embeddings.numpy(),
            "dense_relu": np.array([layer.activation.__name__ == "relu" for layer in model.tower]),
        }
        if model.use_tokens:
            tokens = model.token_embedding.embeddings.numpy()
            table = model.token_table.numpy()
            arrays["token_bags"] = _masked_mean(tokens[table], table > 0).astype(np.float32)
        for col in model.demographic_vocabularies:
            arrays[f"demographic/{col}"] = model.demographic_embeddings[col].embeddings.numpy()
        for i, layer in enumerate(model.tower):
            arrays[f"dense_{i}/kernel"] = layer.kernel.numpy()
            arrays[f"dense_{i}/bias"] = layer.bias.numpy()
        return cls(model.config, model.item_ids, arrays, model.demographic_vocabularies)

    def item_positions(self, history: np.ndarray) -> np.ndarray:
        """Lookup positions (0 pad, 1 unknown, >= 2 items) of a string array of item IDs."""
        get = self._item_position.get
        flat = np.asarray(history, dtype=object).ravel()
        positions = np.fromiter((get(i, 1) for i in flat), np.int64, len(flat))
        return positions.reshape(np.shape(history))

    def known_only(self, history: list[str]) -> list[str]:
        """``history`` without IDs the model does not know, so that the newest ``max_history``
        *known* items form the bag (unknown IDs must not push known ones out of it)."""
        return [i for i in history if i in self._item_position and i != ""]

    def split_known(self, history: Sequence[str]) -> tuple[list[str], list[str]]:
        """``history`` as (the IDs the model knows, the IDs it does not), each in order, in one
        pass: :meth:`known_only`'s list and the ignored IDs that a response reports (padding,
        ``""``, is in neither)."""
        distinct = set(history)
        if "" not in distinct and distinct <= self._item_position.keys():  # all known: one C pass
            return list(history), []
        get = self._item_position.get
        known: list[str] = []
        ignored: list[str] = []
        for i in history:
            position = get(i)
            if position is None:
                ignored.append(i)
            elif position:
                known.append(i)
        return known, ignored

    def known_tail(self, history: Sequence[object], n: int) -> list[str]:
        """The last ``n`` IDs of ``history`` (as text) that the model knows, oldest first:
        ``known_only(history)[-n:]``, read from the end only as far as needed."""
        get = self._item_position.get
        tail: list[str] = []
        for i in reversed(history):
            if len(tail) >= n:
                break
            if get(text := str(i)):  # None: unknown; 0: padding
                tail.append(text)
        return tail[::-1]

    def knows(self, item_id: str) -> bool:
        """Whether ``item_id`` is in the model's vocabulary (can move a user vector)."""
        return item_id in self._item_position

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """User vectors, float32 of shape ``(n, output_dim)``.

        Parameters
        ----------
        inputs : mapping
            ``history`` (object, (n, max_history), left-padded with ``""``), ``example_age``,
            ``age``, and the categorical demographics, as built by ``query_inputs``.
        """
        return self.from_positions(self.item_positions(inputs["history"]), inputs)

    def from_positions(self, history: np.ndarray, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """:meth:`__call__` with the history already as lookup positions (int, (n, max_history),
        from :meth:`item_positions`); ``inputs`` gives the other features."""
        known = history >= 2
        embedded = self._history_embedding[history]
        count = known.sum(axis=1, keepdims=True).astype(np.float32)
        parts = [
            _masked_mean(embedded, known),
            np.log1p(count) / np.float32(np.log1p(self.max_history)),
        ]
        recent = self.config.recent_history
        if recent > 0:
            parts.append(_masked_mean(embedded[:, -recent:], known[:, -recent:]))
        if self._token_bags is not None:
            parts.append(_masked_mean(self._token_bags[history], known))
        if self._demographics:
            for col in DEMOGRAPHIC_COLUMNS:
                vocab, table = self._demographics[col]
                values = np.asarray(inputs[col], dtype=object).ravel()
                rows = np.fromiter((vocab.get(str(v), 0) for v in values), np.int64, len(values))
                parts.append(table[rows])
            age = np.asarray(inputs["age"], dtype=np.float32).reshape(-1)
            missing = np.isnan(age)
            age = np.where(missing, 0.0, age / 100.0).astype(np.float32)
            parts.append(np.stack([age, age * age, missing.astype(np.float32)], axis=1))
        if self.config.use_example_age:
            ea = np.asarray(inputs["example_age"], dtype=np.float32).reshape(-1)
            parts.append(np.stack([ea, ea * ea], axis=1))
            if self.config.age_knots:
                parts.append(age_hats(ea, self.config.age_knots))
        x = np.concatenate(parts, axis=1).astype(np.float32)
        for kernel, bias, relu in self._layers:
            x = x @ kernel + bias
            if relu:
                x = np.maximum(x, 0.0)
        return x.astype(np.float32)

    def queries(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """User vectors with a constant 1 appended, shape ``(n, output_dim + 1)``: the index's
        query form, whose dot product with ``[w_i, b_i]`` is the full softmax logit."""
        u = self(inputs)
        return np.concatenate([u, np.ones((u.shape[0], 1), np.float32)], axis=1)
