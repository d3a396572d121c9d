"""Ranking examples: simulated impressions from the candidate generator, and rating examples.

MovieLens has no impression log, so one is simulated (Covington et al. 2016, Sec. 4): at a
training event ``(u, i, r, t)`` the candidate generator, given only what ``u`` watched before
``t``, shows its top ``N`` unseen items. If ``i`` is among them it is the positive, weighted by
its rating ``r`` (the paper weights by watch time); the other shown items are negatives with unit
weight. Impressions whose watch was not shown are dropped (at serving the ranker only ever sees
the generator's top ``N``).

With a label horizon ``H > 1`` (``RankerOptions.label_horizon``), every shown item among the
user's next ``H`` watches is a positive, each weighted by its own rating: an impression whose
item is watched a few sessions later still led to a watch. The ranker then learns what the user
will watch soon rather than next, which is what a held-out future (temporal-user-20) measures.

Every feature is computed as of ``t``: the history, the user's rating count and mean, the time
since their previous event, each candidate's popularity (its ratings before ``t``) and how often
it was shown to the user in earlier simulated impressions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from towers.examples import PAD, history_windows
from towers.splits import chronological

NUMERIC = (
    "tower_score", "tower_rank", "time_since_last", "prev_impressions",
    "user_count", "user_mean", "item_popularity",
)  # fmt: skip
# A retrieval function: (histories, seen sets, event times, user ids) -> per row (ids, scores).
RetrieveFn = Callable[[np.ndarray, list, np.ndarray, np.ndarray], list]


@dataclass
class RankingExamples:
    """Rows for the ranker. ``label``/``weight`` drive the ranking head; ``rating`` (NaN where
    unknown) the rating head; ``group`` ties the rows of one impression together."""

    user_id: np.ndarray
    item_id: np.ndarray
    history: np.ndarray  # object (n, max_history), left-padded with ""
    numeric: dict[str, np.ndarray]
    label: np.ndarray
    weight: np.ndarray
    rating: np.ndarray
    group: np.ndarray
    # float32 (n, max_history), aligned with ``history``: the rating of each history item, NaN
    # for a watch without a rating and for padding. None: no ratings known.
    history_rating: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.item_id)

    def history_ratings(self) -> np.ndarray:
        """``history_rating``, or all NaN (aligned with ``history``) when no rating is known."""
        if self.history_rating is not None:
            return self.history_rating
        return np.full(self.history.shape, np.nan, np.float32)


@dataclass(frozen=True)
class EventContext:
    """Per event of a chronologically ordered log: what was known just before it."""

    ordered: pd.DataFrame
    start: np.ndarray  # index of the user's first event
    position: np.ndarray  # the event's position in its user's sequence
    user_count: np.ndarray
    user_mean: np.ndarray
    time_since_last: np.ndarray


def _before(values: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Per row, the sum of ``values`` over the same user's earlier rows (``start``: each row's
    user's first row)."""
    cumsum = np.cumsum(values)
    return cumsum - values - np.where(start > 0, cumsum[np.maximum(start - 1, 0)], 0.0)


def event_context(interactions: pd.DataFrame) -> EventContext:
    """Counts, mean ratings and gaps as of each event (before it, never including it)."""
    ordered = chronological(interactions)
    users = ordered["user_id"].to_numpy()
    new_user = np.r_[True, users[1:] != users[:-1]]
    start = np.maximum.accumulate(np.where(new_user, np.arange(len(users)), 0))
    position = np.arange(len(users)) - start
    ratings = ordered["rating"].to_numpy(dtype=np.float64)
    times = ordered["timestamp"].to_numpy(dtype=np.int64)
    # The mean is over the rated events before (a watch without a rating has none), as the
    # service computes it (serving.histories.user_state).
    rated = np.isfinite(ratings)
    before_sum = _before(np.where(rated, ratings, 0.0), start)
    before_rated = _before(rated.astype(np.float64), start)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(before_rated > 0, before_sum / np.maximum(before_rated, 1), np.nan)
    gap = np.where(position > 0, times - np.r_[times[0], times[:-1]], np.nan)
    return EventContext(ordered, start, position, position.astype(np.float64), mean, gap)


def rating_windows(
    ratings: np.ndarray, starts: np.ndarray, positions: np.ndarray, max_history: int
) -> np.ndarray:
    """The ratings aligned with :func:`towers.examples.history_windows` (NaN where padded)."""
    padded = np.append(np.asarray(ratings, np.float32), np.float32(np.nan))
    index = history_windows(np.arange(len(ratings)), starts, positions, max_history, len(ratings))
    return padded[index]


def popularity_before(
    interactions: pd.DataFrame, item_ids: np.ndarray, times: np.ndarray
) -> np.ndarray:
    """How many events of ``item_ids[j]`` happened strictly before ``times[j]``."""
    codes, uniques = pd.factorize(interactions["item_id"].astype(str))
    t0 = int(interactions["timestamp"].min()) if len(interactions) else 0
    span = int(interactions["timestamp"].max()) - t0 + 2 if len(interactions) else 2
    keys = np.sort(codes.astype(np.int64) * span + (interactions["timestamp"].to_numpy() - t0))
    query_codes = pd.Index(uniques).get_indexer(np.asarray(item_ids, dtype=str))
    clipped = np.clip(np.asarray(times, np.int64) - t0, 0, span - 1)
    before = np.searchsorted(keys, query_codes * span + clipped, side="left")
    first = np.searchsorted(keys, query_codes * span, side="left")
    return np.where(query_codes >= 0, before - first, 0).astype(np.float64)


def simulate_impressions(
    interactions: pd.DataFrame,
    retrieve: RetrieveFn,
    *,
    num_candidates: int = 100,
    max_history: int = 50,
    events_per_user: int | None = 20,
    seed: int = 0,
    label_mask: np.ndarray | None = None,
    negatives_per_impression: int | None = None,
    label_horizon: int = 1,
    max_position: int | None = None,
) -> RankingExamples:
    """Impressions at (up to ``events_per_user``) events of each user that have a history.

    Parameters
    ----------
    interactions : pandas.DataFrame
        The training log (``user_id``, ``item_id``, ``rating``, ``timestamp``).
    retrieve : callable
        ``retrieve(histories, seen, times, user_ids)`` -> list of ``(item_ids, scores)``, the
        generator's top ``num_candidates`` unseen items for each query (see
        :func:`ranking.pipeline.tower_retrieve`).
    num_candidates : int
        Items shown per impression (``N``).
    max_history : int
        Watched items in the history bag.
    events_per_user : int or None
        Impressions sampled per user (None: every event after the first).
    seed : int
    label_mask : numpy.ndarray of bool, optional
        Aligned with the rows of ``interactions``: only these events may be impression labels
        (e.g. the events the generator was not trained on).
    negatives_per_impression : int, optional
        Keep this many of each impression's negatives, drawn at random, each weighted by
        ``negatives / kept`` so the weighted loss keeps its expectation (None keeps all).
    label_horizon : int
        Positives of an impression: the shown items among the user's next ``label_horizon``
        watches (1: the next watch only, as in the paper), each weighted by its rating.
    max_position : int, optional
        Only events with at most this many earlier events of the same user (a history of
        ``1..max_position`` items): a new user's impressions. None: every event.
    """
    if label_horizon < 1:
        raise ValueError(f"label_horizon must be >= 1, got {label_horizon}")
    lowest = np.nanmin(interactions["rating"].to_numpy(np.float64), initial=np.inf)
    if lowest < 0:  # a negative weight would teach the ranker to push the watch down
        raise ValueError(
            f"interactions: ratings weigh the ranker's positives, so they must be >= 0; the "
            f"lowest is {lowest:g} (shift a -1/+1 scale to 1/2, say)"
        )
    if max_position is not None and max_position < 1:
        raise ValueError(f"max_position must be >= 1 or None (every event), got {max_position}")
    if label_mask is not None:
        interactions = interactions.assign(_label_ok=np.asarray(label_mask, bool))
    ctx = event_context(interactions)
    ordered = ctx.ordered
    rng = np.random.default_rng(seed)
    ok = ordered["_label_ok"].to_numpy(bool) if label_mask is not None else True
    early = ctx.position <= max_position if max_position is not None else True
    eligible = np.flatnonzero((ctx.position >= 1) & ok & early)
    if events_per_user is not None:
        keys = rng.random(len(eligible))
        frame = pd.DataFrame({"row": eligible, "user": ordered["user_id"].to_numpy()[eligible],
                              "key": keys})  # fmt: skip
        frame = frame.sort_values("key").groupby("user", sort=False).head(events_per_user)
        eligible = np.sort(frame["row"].to_numpy())
    items = ordered["item_id"].astype(str).to_numpy()
    codes, vocab = pd.factorize(items)
    vocab = np.append(np.asarray(vocab, dtype=object), PAD)
    windows = vocab[
        history_windows(codes, ctx.start[eligible], eligible, max_history, len(vocab) - 1)
    ]
    window_ratings = rating_windows(
        ordered["rating"].to_numpy(np.float32), ctx.start[eligible], eligible, max_history
    )
    times = ordered["timestamp"].to_numpy()[eligible]
    users = ordered["user_id"].astype(str).to_numpy()[eligible]
    seen = [set(items[ctx.start[r] : r]) for r in eligible]
    shown = retrieve(windows, seen, times, users)

    rows: dict[str, list] = {
        k: [] for k in ("event", "item", "score", "rank", "label", "prev", "neg_weight", "row")
    }
    all_users = ordered["user_id"].to_numpy()
    # One past each row's user's last row: a label never comes from another user.
    last = np.r_[all_users[1:] != all_users[:-1], True]
    end = np.minimum.accumulate(np.where(last, np.arange(len(items)), len(items))[::-1])[::-1] + 1
    shown_before: dict[str, Counter] = {}
    for n, (row, (cand_ids, cand_scores)) in enumerate(zip(eligible, shown, strict=True)):
        future = range(row, min(row + label_horizon, end[row]))
        # Item -> its row: the first of the user's next watches of it.
        targets = {}
        for j in future:
            if label_mask is None or ok[j]:
                targets.setdefault(items[j], j)
        is_target = np.fromiter((c in targets for c in cand_ids), bool, len(cand_ids))
        if not is_target.any():
            continue
        counter = shown_before.setdefault(users[n], Counter())
        keep = np.ones(len(cand_ids), bool)
        negatives = int((~is_target).sum())
        if negatives_per_impression is not None and negatives > negatives_per_impression:
            drop = rng.choice(negatives, negatives - negatives_per_impression, replace=False)
            keep[np.flatnonzero(~is_target)[drop]] = False
        kept_negatives = int((keep & ~is_target).sum())
        for rank, (item, score) in enumerate(zip(cand_ids, cand_scores, strict=True), 1):
            if not keep[rank - 1]:
                continue
            rows["neg_weight"].append(negatives / max(kept_negatives, 1))
            rows["event"].append(n)
            rows["item"].append(item)
            rows["score"].append(score)
            rows["rank"].append(rank)
            rows["label"].append(is_target[rank - 1])
            rows["row"].append(targets.get(item, row))
            rows["prev"].append(counter[item])
        counter.update(cand_ids)
    event = np.asarray(rows["event"], dtype=np.int64)
    picked = eligible[event]
    label = np.asarray(rows["label"], dtype=np.float32)
    # A positive's weight and rating are those of its own watch (the next one, or a later one
    # within the horizon). A watch without a rating weighs as the log's mean rating.
    all_ratings = ordered["rating"].to_numpy(dtype=np.float32)
    finite = all_ratings[np.isfinite(all_ratings)]
    typical = np.float32(finite.mean()) if finite.size else np.float32(1.0)
    rating = all_ratings[np.asarray(rows["row"], np.int64)]
    item_ids = np.asarray(rows["item"], dtype=object)
    return RankingExamples(
        user_id=users[event],
        item_id=item_ids,
        history=windows[event],
        history_rating=window_ratings[event],
        numeric={
            "tower_score": np.asarray(rows["score"], np.float64),
            "tower_rank": np.asarray(rows["rank"], np.float64),
            "time_since_last": ctx.time_since_last[picked],
            "prev_impressions": np.asarray(rows["prev"], np.float64),
            "user_count": ctx.user_count[picked],
            "user_mean": ctx.user_mean[picked],
            "item_popularity": popularity_before(interactions, item_ids, times[event]),
        },
        label=label,
        weight=np.where(
            label > 0, np.where(np.isfinite(rating), rating, typical), rows["neg_weight"]
        ).astype(np.float32),
        # Positives also carry their rating: the rating loss on impression rows is an auxiliary
        # signal for the shared embeddings (those events count twice in the rating loss, once
        # here and once as rating rows). Dropping it measured worse for ranking: ml-100k
        # NDCG@10 0.1967 against 0.2055 (benchmarks/ranking.py).
        rating=np.where(label > 0, rating, np.nan).astype(np.float32),
        group=event,
    )


def rating_examples(
    train: pd.DataFrame,
    targets: pd.DataFrame | None = None,
    *,
    max_history: int = 50,
    context: str = "before",
) -> RankingExamples:
    """Rows for the rating head only (``label`` NaN, so the ranking loss skips them).

    Parameters
    ----------
    train : pandas.DataFrame
        The training log.
    targets : pandas.DataFrame, optional
        (user, item[, rating]) pairs to predict; default: the rows of ``train`` themselves.
    max_history : int
    context : {"before", "all"}
        ``before``: features as of the row's timestamp (for time-ordered protocols);
        ``all``: every other training rating of the user (for random splits, which have no time
        order to respect). A training row never sees itself either way.
    """
    if context not in ("before", "all"):
        raise ValueError(f"context must be 'before' or 'all', got {context!r}")
    ctx = event_context(train)
    ordered = ctx.ordered
    items = ordered["item_id"].astype(str).to_numpy()
    own = targets is None
    targets = ordered if own else targets.reset_index(drop=True)
    t_users = targets["user_id"].astype(str).to_numpy()
    t_items = targets["item_id"].astype(str).to_numpy()
    ratings = (
        targets["rating"].to_numpy(np.float32)
        if "rating" in targets
        else np.full(len(targets), np.nan, np.float32)
    )
    codes, vocab = pd.factorize(items)
    vocab = np.append(np.asarray(vocab, dtype=object), PAD)
    if context == "before" and own:
        rows = np.arange(len(ordered))
        history = vocab[history_windows(codes, ctx.start[rows], rows, max_history, len(vocab) - 1)]
        history_rating = rating_windows(
            ordered["rating"].to_numpy(np.float32), ctx.start[rows], rows, max_history
        )
        numeric = {"user_count": ctx.user_count, "user_mean": ctx.user_mean}
        popularity = popularity_before(train, t_items, ordered["timestamp"].to_numpy())
    elif context == "before":
        raise ValueError("context 'before' needs targets=None (rows of the training log)")
    else:
        users = ordered["user_id"].astype(str).to_numpy()
        by_user = pd.Series(np.arange(len(ordered))).groupby(users).agg(list).to_dict()
        train_ratings = ordered["rating"].to_numpy(np.float32)
        history = np.full((len(targets), max_history), PAD, dtype=object)
        history_rating = np.full((len(targets), max_history), np.nan, np.float32)
        counts = np.zeros(len(targets))
        means = np.full(len(targets), np.nan)
        for n, (user, item) in enumerate(zip(t_users, t_items, strict=True)):
            rows = [r for r in by_user.get(user, []) if items[r] != item]
            recent = rows[-max_history:]
            if recent:
                history[n, max_history - len(recent) :] = items[recent]
                history_rating[n, max_history - len(recent) :] = train_ratings[recent]
            counts[n] = len(rows)
            # the user's other rated items only: every rating of this one is left out
            other = train_ratings[rows].astype(np.float64)
            if np.isfinite(other).any():
                means[n] = float(np.nanmean(other))
        numeric = {"user_count": counts, "user_mean": means}
        item_counts = pd.Series(items).value_counts()
        popularity = item_counts.reindex(t_items).fillna(0).to_numpy()
        if own:  # leave out the user's own ratings of the item (all of them, if rated twice)
            pairs = pd.Series(1, index=pd.MultiIndex.from_arrays([users, items])).groupby(
                level=[0, 1]
            ).sum()  # fmt: skip
            key = pd.MultiIndex.from_arrays(
                [np.asarray(t_users, object), np.asarray(t_items, object)]
            )
            popularity = popularity - pairs.reindex(key).fillna(0).to_numpy()
    n_rows = len(targets)
    nan = np.full(n_rows, np.nan)
    return RankingExamples(
        user_id=t_users.astype(object),
        item_id=t_items.astype(object),
        history=history,
        history_rating=history_rating,
        numeric={
            "tower_score": nan,
            "tower_rank": nan,
            "time_since_last": nan,
            "prev_impressions": nan,
            **numeric,
            "item_popularity": popularity.astype(np.float64),
        },  # fmt: skip
        label=np.full(n_rows, np.nan, np.float32),
        weight=np.ones(n_rows, np.float32),
        rating=ratings,
        group=np.full(n_rows, -1, np.int64),
    )


def concat(parts: list[RankingExamples]) -> RankingExamples:
    """Stack example sets (e.g. impressions and rating rows) into one."""
    return RankingExamples(
        user_id=np.concatenate([p.user_id for p in parts]),
        item_id=np.concatenate([p.item_id for p in parts]),
        history=np.concatenate([p.history for p in parts]),
        history_rating=np.concatenate([p.history_ratings() for p in parts]),
        numeric={k: np.concatenate([p.numeric[k] for p in parts]) for k in NUMERIC},
        label=np.concatenate([p.label for p in parts]),
        weight=np.concatenate([p.weight for p in parts]),
        rating=np.concatenate([p.rating for p in parts]),
        group=np.concatenate([p.group for p in parts]),
    )
