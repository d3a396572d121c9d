"""Raw query features for the tower: history bags, item tokens, demographics and example age.

Pure functions from data frames to numpy arrays of raw strings and floats; the model does the ID
lookups. The "search-like" tokens of the paper (Sec. 4.1) become, on MovieLens, the genres, decade,
tags and title words of the watched items.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from towers.examples import PAD, pad_histories

DEMOGRAPHIC_COLUMNS = ("gender", "occupation", "zip_prefix")
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an and the of in on to for with at by from is it its la le de".split())


def item_tokens(
    title: str, year: float, genres: Iterable[str], tags: Iterable[str], max_tokens: int
) -> list[str]:
    """The tokens that describe one item, most informative first, at most ``max_tokens``.

    Genres (``g:``), decade (``y:``), tags (``t:``) and title words (``w:``), without the year in
    the title and without stop words.
    """
    tokens = [f"g:{g.lower()}" for g in genres]
    if year == year:  # not NaN
        tokens.append(f"y:{int(year) // 10 * 10}s")
    tokens += [f"t:{t.lower()}" for t in tags]
    title = re.sub(r"\(\d{4}\)\s*$", "", title.lower())
    tokens += [f"w:{w}" for w in _WORD.findall(title) if w not in _STOP and not w.isdigit()]
    return list(dict.fromkeys(tokens))[:max_tokens]


def item_token_table(
    items: pd.DataFrame, item_ids: Sequence[str], max_tokens: int, min_count: int = 2
) -> tuple[list[str], np.ndarray]:
    """Token vocabulary and a per-item token matrix, aligned with ``item_ids``.

    Parameters
    ----------
    items : pandas.DataFrame
        Item metadata (``item_id``, ``title``, ``year``, ``genres``, ``tags``).
    item_ids : sequence of str
        The item vocabulary, in model order.
    max_tokens : int
        Tokens kept per item.
    min_count : int
        A token must describe at least this many vocabulary items to get an embedding.

    Returns
    -------
    vocabulary : list of str
        Token strings; index ``i`` in the table means ``vocabulary[i - 1]`` (0 is padding).
    table : numpy.ndarray of int32, shape (len(item_ids), max_tokens)
    """
    meta = items.drop_duplicates("item_id", keep="last").set_index("item_id")
    meta = meta.reindex(pd.Index([str(i) for i in item_ids]))
    known = meta["title"].notna().to_numpy()
    per_item: list[list[str]] = [
        item_tokens(str(title), float(year), genres, tags, max_tokens) if ok else []
        for ok, title, year, genres, tags in zip(
            known, meta["title"], meta["year"], meta["genres"], meta["tags"], strict=True
        )
    ]
    counts = Counter(t for tokens in per_item for t in tokens)
    vocabulary = sorted(t for t, c in counts.items() if c >= min_count)
    index = {t: i + 1 for i, t in enumerate(vocabulary)}
    table = np.zeros((len(item_ids), max_tokens), dtype=np.int32)
    for row, tokens in enumerate(per_item):
        kept = [index[t] for t in tokens if t in index]
        table[row, : len(kept)] = kept
    return vocabulary, table


NO_VALUES = "(no values)"  # the vocabulary of a demographic column the data leaves empty


@dataclass(frozen=True)
class UserFeatures:
    """Demographics by raw user ID, for datasets that have them (ml-100k).

    Missing users and fields get ``""`` (the lookup's OOV) and age NaN (fed as 0 with a
    missing-flag).
    """

    table: pd.DataFrame  # indexed by user_id

    @classmethod
    def from_frame(cls, users: pd.DataFrame | None) -> UserFeatures | None:
        if users is None or users.empty:
            return None
        return cls(users.set_index("user_id"))

    def vocabularies(self) -> dict[str, list[str]]:
        """Each categorical column's values. A column the users file lacks (or leaves empty)
        gets the placeholder :data:`NO_VALUES`, which no user has: every user is then "unknown"
        there, and the model keeps the same inputs whichever columns the file had."""
        out = {}
        for c in DEMOGRAPHIC_COLUMNS:
            values = self.table[c].dropna().astype(str)
            out[c] = sorted(set(values) - {""}) or [NO_VALUES]
        return out

    def lookup(self, user_ids: Sequence[str] | np.ndarray) -> dict[str, np.ndarray]:
        """Columns ``age`` (float32) and the categorical columns (object str) for ``user_ids``."""
        frame = self.table.reindex(pd.Index(np.asarray(user_ids, dtype=str)))
        out: dict[str, np.ndarray] = {"age": frame["age"].to_numpy(dtype=np.float32)}
        for col in DEMOGRAPHIC_COLUMNS:
            out[col] = frame[col].fillna("").astype(str).to_numpy(dtype=object)
        return out


def query_inputs(
    histories: np.ndarray | list[list[str]],
    *,
    max_history: int,
    user_features: UserFeatures | None = None,
    user_ids: Sequence[str] | np.ndarray | None = None,
    demographics: dict[str, np.ndarray] | None = None,
    example_age: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Assemble the tower's raw input dict.

    Parameters
    ----------
    histories : numpy.ndarray of str, shape (n, max_history), or list of lists of str
        Watch histories, oldest first (lists are left-padded here).
    max_history : int
        Bag length.
    user_features, user_ids :
        Demographics source and whose rows to take; used when ``demographics`` is not given.
    demographics : dict, optional
        Explicit ``age``, ``gender``, ``occupation``, ``zip_prefix`` arrays (anonymous requests).
    example_age : numpy.ndarray of float32, shape (n,), optional
        Training example ages; zeros (serving time) when omitted.

    Returns
    -------
    dict of str to numpy.ndarray
        ``history`` (object, (n, max_history)), ``example_age`` (float32, (n,)), ``age``
        (float32, (n,), NaN if unknown) and the categorical demographics (object, (n,)).
    """
    if isinstance(histories, list):
        histories = pad_histories(histories, max_history)
    n = histories.shape[0]
    inputs: dict[str, np.ndarray] = {
        "history": histories,
        "example_age": np.zeros(n, np.float32) if example_age is None else example_age,
    }
    if demographics is None and user_features is not None and user_ids is not None:
        demographics = user_features.lookup(user_ids)
    demographics = demographics or {}
    inputs["age"] = np.asarray(demographics.get("age", np.full(n, np.nan)), dtype=np.float32)
    for col in DEMOGRAPHIC_COLUMNS:
        inputs[col] = np.asarray(demographics.get(col, np.full(n, PAD, dtype=object)), dtype=object)
    return inputs


def age_hats(age: np.ndarray, knots: int) -> np.ndarray:
    """The example age (0 now, 1 the start of the training window) as ``knots`` piecewise-linear
    hat functions, float32 ``(n, knots)``: ``max(0, 1 - |a (knots - 1) - j|)`` for knot ``j``,
    with ``a`` clipped to ``[0, 1]``. Each row has at most two non-zero entries and sums to 1.
    This is the numpy form (:class:`towers.query.QueryEncoder`);
    :class:`towers.model.CandidateTower` computes the same in TensorFlow.

    Examples
    --------
    >>> age_hats(np.array([0.0, 0.25, 2.0]), 3)
    array([[1. , 0. , 0. ],
           [0.5, 0.5, 0. ],
           [0. , 0. , 1. ]], dtype=float32)
    """
    position = np.clip(np.asarray(age, np.float32).reshape(-1, 1), 0.0, 1.0) * (knots - 1)
    grid = np.arange(knots, dtype=np.float32)[None, :]
    return np.maximum(0.0, 1.0 - np.abs(position - grid)).astype(np.float32)
