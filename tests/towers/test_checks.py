import numpy as np
import pytest

from ranking.model import RankerConfig
from ranking.train import RankerOptions
from towers.checks import FieldTypeError
from towers.model import TowerConfig
from towers.train import TrainOptions


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TowerConfig(embedding_dim=4.5), "TowerConfig.embedding_dim must be int, got 4.5"),
        (lambda: TowerConfig(dropout="0.1"), "TowerConfig.dropout must be float, got '0.1'"),
        (lambda: TowerConfig(use_tokens=1), "TowerConfig.use_tokens must be bool, got 1"),
        (
            lambda: TowerConfig(max_examples_per_user=2.5),
            "max_examples_per_user must be int | None",
        ),
        (lambda: TrainOptions(epochs=1.5), "TrainOptions.epochs must be int"),
        (lambda: TrainOptions(verbose="loud"), "TrainOptions.verbose must be int"),
        (lambda: RankerConfig(num_quantiles=2.5), "RankerConfig.num_quantiles must be int"),
        (lambda: RankerConfig(hidden_units=(8, "4")), r"RankerConfig.hidden_units must be tuple"),
        (lambda: RankerOptions(seed=None), "RankerOptions.seed must be int"),
        (lambda: TrainOptions(epochs=True), "TrainOptions.epochs must be int"),
    ],
)
def test_a_wrong_type_is_refused_by_name(make, message):
    with pytest.raises(FieldTypeError, match=message):
        make()
    assert issubclass(FieldTypeError, ValueError) and issubclass(FieldTypeError, TypeError)


def test_numbers_of_other_types_and_lists_are_converted_so_the_config_saves_as_json():
    import json
    from dataclasses import asdict
    from pathlib import Path

    config = TowerConfig(embedding_dim=np.int64(8), dropout=np.float32(0), use_tokens=np.True_)
    assert type(config.embedding_dim) is int and type(config.dropout) is float
    assert config.use_tokens is True
    json.dumps(config.to_dict())
    options = TrainOptions(learning_rate=1, log_dir=Path("logs"))
    assert options.learning_rate == 1.0 and options.log_dir == "logs"
    json.dumps(asdict(options))
    ranker = RankerConfig(hidden_units=[8, np.int64(4)])  # as read from JSON
    assert ranker.hidden_units == (8, 4) and type(ranker.hidden_units[1]) is int
    assert RankerConfig(hidden_units=np.array([8, 4])).hidden_units == (8, 4)
    for make in (lambda: TrainOptions(seed=-1), lambda: RankerOptions(seed=2**32)):
        with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*32\)"):
            make()
    for bad in (np.nan, -3.0, 0.0):
        with pytest.raises(ValueError, match="embedding_scale must be a finite number > 0"):
            RankerConfig(embedding_scale=bad)


def test_counts_and_positive_integers_by_name():
    from towers.checks import count_int, positive_int

    assert count_int("n", 0) == 0 and count_int("n", np.int64(3)) == 3
    assert count_int("n", None, optional=True) is None
    assert positive_int("k", np.int32(2)) == 2
    for value in (-1, 1.0, True, "2", None):
        with pytest.raises(ValueError, match=f"n must be an integer >= 0, got {value!r}"):
            count_int("n", value)
    with pytest.raises(ValueError, match="n must be an integer >= 0 or None, got -1"):
        count_int("n", -1, optional=True)
    for value in (0, 1.5, False):
        with pytest.raises(ValueError, match=f"k must be a positive integer, got {value!r}"):
            positive_int("k", value)
