"""Shared fixtures: tiny hand-made logs, and MovieLens in ../shared/data (never downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

import towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any test imports TensorFlow)

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("NEXTWATCH_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "ml-100k").is_dir():
        pytest.fail(f"MovieLens test data not found at {path}; set NEXTWATCH_TEST_DATA")
    return path


@pytest.fixture()
def three_user_log() -> pd.DataFrame:
    """3 users, 6 events. u1: a(10) b(20) c(30); u2: b(5) a(15); u3: c(7)."""
    rows = [
        ("u1", "b", 4.0, 20), ("u2", "a", 3.0, 15), ("u1", "a", 5.0, 10),
        ("u3", "c", 1.0, 7), ("u1", "c", 2.0, 30), ("u2", "b", 4.0, 5),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


def planted_dataset():
    """80 users with demographics: 40 watch A then B, 40 watch C then D, then one of E..H.

    Items have titles and genres (A, B: Comedy; C, D: Drama; E..H: Horror), so filters and
    titles can be checked by hand.
    """
    from towers.data import Dataset, empty_item_metadata

    rows = []
    for u in range(80):
        first, second = ("A", "B") if u < 40 else ("C", "D")
        rows += [
            (f"u{u}", first, 4.0, 10 * u + 1),
            (f"u{u}", second, 4.0, 10 * u + 2),
            (f"u{u}", "EFGH"[u % 4], 3.0, 10 * u + 3),
        ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = empty_item_metadata(list("ABCDEFGH"))
    items["title"] = [f"Movie {i} (1990)" for i in "ABCDEFGH"]
    items["genres"] = [["Comedy"]] * 2 + [["Drama"]] * 2 + [["Horror"]] * 4
    users = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(80)],
            "age": [20.0 + u % 30 for u in range(80)],
            "gender": ["F" if u % 2 else "M" for u in range(80)],
            "occupation": ["student" if u % 3 else "artist" for u in range(80)],
            "zip_prefix": [str(u % 5) for u in range(80)],
        }
    )
    return Dataset("planted", frame, items, users, "0" * 64)


@pytest.fixture(scope="session")
def planted_artefact(tmp_path_factory) -> Path:
    """A trained artefact of :func:`planted_dataset` with every feature on (history bag, recent
    bag, tokens, demographics, example age), its index and its catalogue files."""
    from towers.artefact import save_artefact
    from towers.model import TowerConfig
    from towers.train import TrainOptions, train_tower

    config = TowerConfig(
        embedding_dim=8, token_dim=4, output_dim=8, depth=1, max_history=3, recent_history=2,
        max_examples_per_user=None,
    )  # fmt: skip
    data = planted_dataset()
    result = train_tower(
        data, config, TrainOptions(epochs=60, batch_size=32, learning_rate=0.03, verbose=0)
    )
    return save_artefact(result, tmp_path_factory.mktemp("planted") / "artefact", data=data)


@pytest.fixture(scope="session")
def planted_ranked_artefact(planted_artefact, tmp_path_factory) -> Path:
    """A copy of ``planted_artefact`` with a ranker trained for it in ``ranker/``: two members
    serving ``mean logit + 0.5 * tower_score``, so every consumer's test covers the ensemble
    and the blend (as ``nextwatch serve`` trains it for MovieLens)."""
    import shutil

    from ranking.model import RankerConfig
    from ranking.pipeline import train_ranker_job
    from ranking.train import RankerOptions

    copy = tmp_path_factory.mktemp("ranked") / "artefact"
    shutil.copytree(planted_artefact, copy)
    train_ranker_job(
        copy, planted_dataset(), copy / "ranker",
        RankerConfig(hidden_units=(16,), rating_units=(8,), max_history=3, num_quantiles=10,
                     rated_bag=True, tower_score_weight=0.5, members=2),
        RankerOptions(epochs=5, batch_size=64), num_candidates=5, events_per_user=None,
        holdout=False,
    )  # fmt: skip
    return copy


@pytest.fixture(scope="session")
def two_towers(planted_ranked_artefact, tmp_path_factory):
    """``planted_ranked_artefact`` with a new-user tower (first-items examples, history
    dropout) trained on the same log in ``new_user/``."""
    import shutil

    from towers.artefact import NEW_USER_DIR, save_artefact
    from towers.model import TowerConfig
    from towers.train import TrainOptions, train_tower

    copy = tmp_path_factory.mktemp("two-towers") / "artefact"
    shutil.copytree(planted_ranked_artefact, copy)
    config = TowerConfig(
        embedding_dim=8, token_dim=4, output_dim=8, depth=0, max_history=3, recent_history=2,
        max_examples_per_user=None, cold_examples_per_user=4, history_dropout=0.3,
    )  # fmt: skip
    data = planted_dataset()
    result = train_tower(data, config, TrainOptions(epochs=20, batch_size=32, verbose=0))
    save_artefact(result, copy / NEW_USER_DIR, data=data)
    return copy


@pytest.fixture(scope="session")
def two_rankers(two_towers, tmp_path_factory):
    """``two_towers`` with the new-user tower's own ranker, trained on new users' impressions
    (``ranking.pipeline.train_new_user_ranker_job``), in ``new_user/ranker``."""
    import shutil

    from ranking.model import RankerConfig
    from ranking.pipeline import train_new_user_ranker_job
    from ranking.train import RankerOptions
    from towers.artefact import NEW_USER_DIR

    copy = tmp_path_factory.mktemp("two-rankers") / "artefact"
    shutil.copytree(two_towers, copy)
    config = RankerConfig(hidden_units=(16,), rating_units=(8,), max_history=3, num_quantiles=10,
                          tower_score_weight=0.5)  # fmt: skip
    train_new_user_ranker_job(
        copy / NEW_USER_DIR, planted_dataset(), copy / NEW_USER_DIR / "ranker", config,
        RankerOptions(epochs=3, batch_size=64), num_candidates=5, events_per_user=3,
    )  # fmt: skip
    return copy


def child_survives_its_parent(parent_code: str, timeout_s: float = 10.0) -> bool:
    """Run ``parent_code`` in a Python process (it starts a child, prints the child's PID and
    waits), kill that process, and say whether the child is still running ``timeout_s`` later
    (a zombie nobody reaped yet has ended)."""
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE,
                              stdin=subprocess.PIPE, text=True)  # fmt: skip
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()

    def running() -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and running():
        time.sleep(0.05)
    return running()
