"""The Python retrieval API: raw IDs in, recommended items (ID, score, title) out.

>>> rec = Recommender.load("artefacts/candidates")
>>> rec.recommend("42", k=10)                                  # a known user
>>> rec.recommend(history=["1", "260"], genres=["Sci-Fi"])     # anonymous, filtered
>>> rec.similar_items("1", k=5)

Defined answers for the awkward cases (none of them raises):

* **unknown user ID**: treated as a new user with an empty history (and no demographics unless
  ``features`` gives them); ``Recommendations.known_user`` is False.
* **unknown items in a history**: they cannot move the user vector (the model's OOV bucket is
  masked out) and are listed in ``Recommendations.ignored_history``.
* **empty history**: the tower's vector for "no history yet" (plus any demographics), which ranks
  broadly popular items.
* **k larger than the catalogue**: every eligible item, best first (so fewer than ``k``).

Bad arguments (``k`` < 1, an unknown genre, an unknown feature name, an unknown item for
``similar_items``) raise exceptions that name the argument.

Every method is thread-safe: the encoder and catalogue are read-only, and the index takes a
read lock per search (``upsert``/``delete`` take the write lock).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from serving.api_types import (
    FEATURES,
    Query,
    Recommendation,
    Recommendations,
    UnknownItemError,
    check_features,
    checked,
)
from serving.labels import ItemLabels
from serving.rerank import Reranker, load_reranker
from towers.artefact import NEW_USER_DIR, artefact_version
from towers.catalogue import (
    ITEMS_FILE,
    USERS_FILE,
    UserTable,
    complete_catalogue,
    distinct_history,
)
from towers.checks import count_int, positive_int
from towers.features import DEMOGRAPHIC_COLUMNS, query_inputs
from towers.presets import NEW_USER_MAX_RATINGS
from towers.retrieval import (
    PLACED_SHARE,
    Retriever,
    cap_placed,
    new_user_retriever,
    placed_cap,
    route,
)


class Recommender:
    """Recommendations and similar items from one artefact.

    Parameters
    ----------
    retriever : Retriever
    items : pandas.DataFrame
        ``item_id``, ``title``, ``genres`` (sequence of str) for the catalogue.
    users : UserTable, optional
        Known users' histories and demographics.
    version : str
        The artefact version, reported by consumers.
    reranker : Reranker, optional
        The ranking stage; without it the generator's order is returned.
    num_candidates : int
        Candidates retrieved for the ranker to rescore.
    new_user : Retriever, optional
        A second generator (the new-user tower, ``towers.presets.new_user_config``) that
        answers every query with at most ``new_user_max`` known items in its history; its
        candidates are rescored by ``new_user_reranker``, or without one by ``reranker``.
    new_user_max : int
        The most known history items a query may have to go to ``new_user`` (>= 0).
    new_user_reranker : Reranker, optional
        The ranker trained for ``new_user`` on new users' impressions
        (:func:`ranking.pipeline.train_new_user_ranker_job`); ignored without ``new_user``.
    placed_share : float or None
        The share of each list (at least one item) that items placed from metadata may take,
        candidates and answers alike (:func:`towers.retrieval.placed_cap`); None: no cap.
    """

    def __init__(
        self,
        retriever: Retriever,
        items: pd.DataFrame,
        users: UserTable | None = None,
        version: str = "unversioned",
        reranker: Reranker | None = None,
        num_candidates: int = 100,
        new_user: Retriever | None = None,
        new_user_max: int = NEW_USER_MAX_RATINGS,
        new_user_reranker: Reranker | None = None,
        placed_share: float | None = PLACED_SHARE,
    ) -> None:
        placed_cap(1, placed_share)  # checks it
        self.retriever = retriever
        self.new_user = new_user
        self.new_user_max = count_int("new_user_max", new_user_max)
        self.reranker = reranker
        self.new_user_reranker = new_user_reranker if new_user is not None else None
        self.num_candidates = positive_int("num_candidates", num_candidates)
        self.placed_share = placed_share
        self.users = users
        self.version = version
        self.items = items
        self.max_history = retriever.encoder.max_history
        self.labels = ItemLabels(items)

    def add_items(self, items: pd.DataFrame) -> None:
        """Titles, genres and years of items placed in the index at run time (from metadata), so
        that results carry them, genre filters find them and the rankers score them with them.
        The caller upserts their vectors."""
        self.items = pd.concat(
            [self.items[~self.items["item_id"].astype(str).isin(items["item_id"])], items],
            ignore_index=True,
        )
        self.labels.update(items)
        for reranker in {id(r): r for r in (self.reranker, self.new_user_reranker) if r}.values():
            reranker.add_items(items)

    @classmethod
    def load(
        cls, artefact: str | Path, users: bool = True, placed_share: float | None = PLACED_SHARE
    ) -> Recommender:
        """Load the artefact directory written by ``nextwatch train-candidates``; ``users=False``
        leaves out the training users' histories (a caller that passes histories itself, such
        as the live service, which reads them from its event store); ``placed_share`` as the
        constructor's.

        Raises
        ------
        FileNotFoundError
            If ``artefact`` is not an artefact directory.
        """
        artefact = Path(artefact)
        retriever = Retriever.from_artefact(artefact)
        items = pd.read_parquet(artefact / ITEMS_FILE) if (artefact / ITEMS_FILE).exists() else None
        items = complete_catalogue(items, retriever.index.item_ids)
        table = None
        if users and (artefact / USERS_FILE).exists():
            table = UserTable.read(artefact / USERS_FILE)
        version = artefact_version(artefact)
        counts = items["popularity"] if "popularity" in items else pd.Series(0.0, items.index)
        popularity = dict(zip(items["item_id"].astype(str), counts, strict=True))
        new_user = new_user_retriever(artefact)
        return cls(
            retriever, items, table, version, load_reranker(artefact, version, popularity),
            new_user=new_user,
            new_user_reranker=None if new_user is None else load_reranker(
                artefact / NEW_USER_DIR, artefact_version(artefact / NEW_USER_DIR), popularity,
                artefact,
            ),
            placed_share=placed_share,
        )  # fmt: skip

    def reranker_for(self, generator: Retriever) -> Reranker | None:
        """The ranker that rescores ``generator``'s candidates: the new-user tower's own, if
        the artefact has one, else the main ranker (None: no ranking stage)."""
        if generator is self.new_user and self.new_user_reranker is not None:
            return self.new_user_reranker
        return self.reranker

    def generator(self, known: int) -> Retriever:
        """The retriever that answers a history of ``known`` known items: the new-user tower
        for at most ``new_user_max`` of them (when the artefact has one), else the main one."""
        return route(self.retriever, self.new_user, known, self.new_user_max)

    # ----------------------------------------------------------------------------------------------
    @property
    def genres(self) -> list[str]:
        """The genre names a filter may use."""
        return self.labels.genre_names

    def title(self, item_id: str) -> str:
        return self.labels.title(item_id)

    def _resolve(self, query: Query) -> tuple[list[str], dict[str, object], bool, dict]:
        """History, features, whether the user is known, and their rating stats."""
        features = check_features(query.features)
        known = False
        history: list[str] = []
        stored: dict[str, object] = {}
        stats: dict[str, float] = {}
        if query.user_id is not None:
            row = self.users.rows([str(query.user_id)])[0] if self.users is not None else -1
            known = bool(row >= 0)
            if known:
                rows = np.array([row])
                history = self.users.histories(rows)[0]
                demo = self.users.demographics(rows)
                if demo is not None:
                    stored = {c: demo[c][0] for c in FEATURES}
                stats = {c: float(v[0]) for c, v in self.users.stats(rows).items()}
        if query.history is not None:
            history = distinct_history(query.history)
            stats["rating_count"] = float(len(history))
        if query.stats is not None:
            stats.update({str(k): float(v) for k, v in query.stats.items()})
        return history, {**stored, **features}, known, stats

    def recommend(
        self,
        user_id: str | None = None,
        *,
        history: Sequence[str] | None = None,
        features: Mapping[str, object] | None = None,
        k: int = 10,
        exclude: Sequence[str] = (),
        genres: Sequence[str] = (),
        exclude_seen: bool = True,
        rank: bool = True,
    ) -> Recommendations:
        """Top ``k`` items for a known user, or for an anonymous history plus features.

        Parameters
        ----------
        user_id : str, optional
            A user of the training data: their stored history and demographics are used.
        history : sequence of str, optional
            Watched item IDs, oldest first; replaces a known user's stored history.
        features : mapping, optional
            ``age`` (number), ``gender``, ``occupation``, ``zip_prefix``; override stored ones.
        k : int
            How many items (>= 1).
        exclude : sequence of str
            Item IDs never to return.
        genres : sequence of str
            Only return items with at least one of these genres (case-insensitive).
        exclude_seen : bool
            Leave out items in the history (default True).
        rank : bool
            With a ranker loaded (default True): retrieve ``num_candidates`` and return the
            ranker's top ``k``; False returns the generator's own top ``k``.

        Returns
        -------
        Recommendations
        """
        query = Query(user_id, history, features, k, exclude, genres, exclude_seen, rank)
        return self.recommend_batch([query])[0]

    def recommend_batch(self, queries: Sequence[Query]) -> list[Recommendations]:
        """:meth:`recommend` for many queries with one encoder pass and batched searches."""
        if not queries:
            return []
        queries = [checked(q) for q in queries]
        resolved = [self._resolve(q) for q in queries]
        ks = [positive_int("k", q.k) for q in queries]
        allowed = [self.labels.allowed(q.genres) for q in queries]
        histories = [r[0] for r in resolved]
        # One pass over each history: the known IDs (the bag, and the ranker's history) and
        # the ignored ones (reported in the response).
        split = [self.retriever.encoder.split_known(h) for h in histories]
        # Each query's generator (the new-user tower for short histories), and one encoder pass
        # per generator over its queries.
        generators = [self.generator(len(s[0])) for s in split]
        vectors: list[np.ndarray] = [np.empty(0)] * len(queries)
        for generator in {id(g): g for g in generators}.values():
            rows = [i for i, g in enumerate(generators) if g is generator]
            encoded = generator.encoder.queries(
                self.encoder_inputs(
                    [split[i][0] for i in rows], [resolved[i][1] for i in rows],
                    generator.encoder.max_history,
                )
            )  # fmt: skip
            for row, vector in zip(rows, encoded, strict=True):
                vectors[row] = vector
        exclude = [
            set(map(str, q.exclude)) | (set(h) if q.exclude_seen else set())
            for q, h in zip(queries, histories, strict=True)
        ]
        out: list[Recommendations | None] = [None] * len(queries)
        groups: dict[tuple[int, frozenset[str] | None, int], list[int]] = {}
        for i, (k, allow, generator) in enumerate(zip(ks, allowed, generators, strict=True)):
            groups.setdefault((k, allow, id(generator)), []).append(i)
        for (k, allow, _), rows in groups.items():
            generator = generators[rows[0]]
            reranker = self.reranker_for(generator)
            ranked = [reranker is not None and queries[r].rank for r in rows]
            fetch = max(k, self.num_candidates) if any(ranked) else k
            found = generator.search(
                np.stack([vectors[r] for r in rows]), fetch, [exclude[r] for r in rows], allow,
                placed_cap(fetch, self.placed_share),
            )  # fmt: skip
            # Items placed from metadata are held to their share of the answer too.
            placed = generator.placed
            cap = placed_cap(k, self.placed_share) if placed else None
            for r, got, rank in zip(rows, found, ranked, strict=True):
                known, ignored = split[r]
                ids, scores = got.item_ids, got.scores
                if rank:
                    ids, scores = reranker.rerank(
                        ids, scores, known, resolved[r][3], resolved[r][1],
                        k if cap is None else len(ids),
                    )  # fmt: skip
                ids, scores = cap_placed(ids, scores, k, placed, cap)
                out[r] = Recommendations(
                    self._items(ids, scores),
                    None if queries[r].user_id is None else str(queries[r].user_id),
                    resolved[r][2],
                    ignored,
                    bool(rank),
                    "new-user" if generators[r] is self.new_user else "main",
                )
        return [o for o in out if o is not None]

    def encoder_inputs(
        self,
        histories: Sequence[Sequence[str]],
        features: Sequence[Mapping[str, object]],
        max_history: int | None = None,
    ) -> dict[str, np.ndarray]:
        """The query tower's raw input dict for known-item ``histories`` (oldest first) and
        already-checked ``features`` (one mapping per row), with the last ``max_history``
        items (default: the main tower's window)."""
        demographics = {
            "age": np.array(
                [math.nan if f.get("age") is None else float(f["age"]) for f in features],
                np.float32,
            ),
            **{
                c: np.array([str(f.get(c) or "") for f in features], dtype=object)
                for c in DEMOGRAPHIC_COLUMNS
            },
        }
        return query_inputs(
            [list(h) for h in histories],
            max_history=self.max_history if max_history is None else max_history,
            demographics=demographics,
        )

    def encode(
        self, histories: Sequence[Sequence[str]], features: Sequence[Mapping[str, object]]
    ) -> np.ndarray:
        """Query vectors ``[u, 1]``, float32 of shape ``(n, d + 1)`` (see ``encoder_inputs``)."""
        return self.retriever.encoder.queries(self.encoder_inputs(histories, features))

    def similar_items(self, item_id: str, k: int = 10) -> list[Recommendation]:
        """Items whose vectors have the largest dot product with ``item_id``'s (bias left out,
        so this is "watched by the same users", not "popular").

        Raises
        ------
        UnknownItemError
            If ``item_id`` is not in the catalogue, or has no item vector (a catalogue item that
            nobody watched in the training data, until ``POST /v1/items`` places it).
        """
        k = positive_int("k", k)
        item_id = str(item_id)
        try:
            vector = self.retriever.index.vector(item_id)
        except KeyError:
            if item_id in self.labels:  # in the catalogue, but nobody watched it in training
                raise UnknownItemError(
                    f"item_id {item_id!r} has no item vector in model {self.version}: nobody "
                    "watched it in the training data (POST /v1/items places it from metadata)"
                ) from None
            raise UnknownItemError(f"item_id {item_id!r} is not in the catalogue") from None
        vector[-1] = 0.0  # drop the bias term from the score
        cap = placed_cap(k, self.placed_share)
        got = self.retriever.search(vector[None, :], k, [{item_id}], max_placed=cap)[0]
        return self._items(got.item_ids, got.scores)

    def _items(self, ids: list[str], scores: list[float]) -> list[Recommendation]:
        return [
            Recommendation(i, float(s), self.labels.title(i), self.labels.genres(i))
            for i, s in zip(ids, scores, strict=True)
        ]

    def describe(self) -> dict:
        """Version and sizes, for logs and the service's model endpoint."""
        return {
            "version": self.version,
            "items": len(self.retriever.index),
            "users": 0 if self.users is None else len(self.users),
            "index": self.retriever.index.params.mode,
            "ranker": self.reranker is not None,
            "new_user_tower": None
            if self.new_user is None
            else {
                "max_ratings": self.new_user_max,
                "items": len(self.new_user.index),
                "ranker": "own"
                if self.new_user_reranker is not None
                else ("main" if self.reranker is not None else None),
            },
        }
