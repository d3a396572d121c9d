"""The rows of a batch candidate export: each user's top ``k`` from the candidate generator,
as one Arrow table (:data:`SCHEMA`). The per-batch core of both exporters,
:mod:`export.candidates` (local processes) and :mod:`export.beam` (Apache Beam).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from towers.features import query_inputs
from towers.presets import NEW_USER_MAX_RATINGS
from towers.retrieval import Retriever, new_user_retriever, route

FORMATS = ("parquet", "csv")
SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("rank", pa.int32()),
        ("item_id", pa.string()),
        ("score", pa.float32()),
        ("model_version", pa.string()),
    ]
)


def load_generators(artefact: str | Path) -> tuple[Retriever, Retriever | None]:
    """The artefact's retriever, and its new-user tower's if it has one."""
    return Retriever.from_artefact(artefact), new_user_retriever(artefact)


def candidate_table(
    retriever: Retriever,
    user_ids: Sequence[str],
    histories: list[list[str]],
    demographics: dict[str, np.ndarray] | None,
    *,
    k: int,
    exclude_seen: bool,
    model_version: str,
    new_user: Retriever | None = None,
    new_user_max: int = NEW_USER_MAX_RATINGS,
) -> pa.Table:
    """Top ``k`` rows of a batch of users, in one encoder pass and one index search.

    The per-batch core of both exporters (this module's and :mod:`export.beam`).

    Parameters
    ----------
    retriever : Retriever
    user_ids : sequence of str, length n
    histories : list of list of str, length n
        Full watch histories, oldest first (``[]`` for a new user); items the model does not
        know are left out of the query, but still excluded as seen.
    demographics : dict of str to numpy.ndarray, optional
        ``age`` (float32, (n,)) and the categorical columns (object, (n,)), as
        :meth:`towers.catalogue.UserTable.demographics` returns them.
    k : int
        Rows per user (fewer only when fewer items are eligible).
    exclude_seen : bool
        Leave out items in each user's history.
    model_version : str
        Written in every row.
    new_user : Retriever, optional
        The new-user tower, which answers the users with at most ``new_user_max`` known items.
    new_user_max : int

    Returns
    -------
    pyarrow.Table
        :data:`SCHEMA` rows, users in input order, rank 1 (best) first.
    """
    known = [retriever.encoder.known_only(h) for h in histories]
    chosen = [route(retriever, new_user, len(h), new_user_max) for h in known]
    exclude = [set(h) for h in histories] if exclude_seen else None
    found: list = [None] * len(known)
    for generator in {id(g): g for g in chosen}.values():
        rows = np.array([r for r, g in enumerate(chosen) if g is generator])
        inputs = query_inputs(
            [known[r] for r in rows],
            max_history=generator.encoder.max_history,
            demographics=None
            if demographics is None
            else {c: np.asarray(v)[rows] for c, v in demographics.items()},
        )
        got = generator.retrieve(inputs, k, None if exclude is None else [exclude[r] for r in rows])
        for r, g in zip(rows, got, strict=True):
            found[r] = g
    columns: dict[str, list] = {name: [] for name in SCHEMA.names[:-1]}
    for user, got in zip(user_ids, found, strict=True):
        n = len(got.item_ids)
        columns["user_id"].append(np.full(n, user, dtype=object))
        columns["rank"].append(np.arange(1, n + 1, dtype=np.int32))
        columns["item_id"].append(np.asarray(got.item_ids, dtype=object))
        columns["score"].append(np.asarray(got.scores, dtype=np.float32))
    arrays = [
        pa.array(np.concatenate(columns[f.name]) if columns[f.name] else [], type=f.type)
        for f in SCHEMA
        if f.name != "model_version"
    ]
    n_rows = len(arrays[0])
    version = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n_rows, np.int32)), pa.array([model_version])
    ).cast(pa.string())
    return pa.Table.from_arrays([*arrays, version], schema=SCHEMA)
