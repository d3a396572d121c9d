import numpy as np
import pandas as pd
import pytest

from ranking.pipeline import cross_fit_retrieve
from tests.conftest import planted_dataset
from towers.data import Dataset


def with_a_solo_user():
    """The planted log plus user ``solo``, the only one ever to watch item Z."""
    data = planted_dataset()
    solo = pd.DataFrame(
        [("solo", "A", 4.0, 5_000), ("solo", "Z", 5.0, 5_001)],
        columns=["user_id", "item_id", "rating", "timestamp"],
    )
    items = pd.concat([data.items, data.items.iloc[[0]].assign(item_id="Z")], ignore_index=True)
    log = pd.concat([data.interactions, solo], ignore_index=True)
    return Dataset(data.name, log, items, data.users, data.checksum)


def test_each_user_is_answered_by_a_tower_that_never_saw_them(planted_artefact, tmp_path):
    data = with_a_solo_user()
    retrieve = cross_fit_retrieve(planted_artefact, data, num_candidates=9, work=tmp_path)
    users = np.array(["solo"] + [f"u{u}" for u in range(80)], dtype=object)
    histories = np.array([["", "A"]] * len(users), dtype=object)
    got = retrieve(histories, [{"A"}] * len(users), np.full(len(users), 5_000), users)
    # Z is known only to the tower trained on the fold without solo; every known item is
    # returned (9 candidates >= the catalogue), so Z shows exactly where that tower answers.
    assert "Z" not in got[0][0]
    with_z = [u for u, (ids, _) in zip(users[1:], got[1:], strict=True) if "Z" in ids]
    without_z = [u for u, (ids, _) in zip(users[1:], got[1:], strict=True) if "Z" not in ids]
    assert with_z and without_z  # the other fold, and solo's own fold
    assert sorted(tmp_path.iterdir()) == [tmp_path / "fold-0", tmp_path / "fold-1"]


def test_cross_fitting_needs_two_folds(planted_artefact, tmp_path):
    with pytest.raises(ValueError, match="folds"):
        cross_fit_retrieve(planted_artefact, planted_dataset(), 5, tmp_path, folds=1)
