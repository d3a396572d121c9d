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
