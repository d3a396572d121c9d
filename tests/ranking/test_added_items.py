"""Items placed at run time: the ranker scores them with their genres and year."""

import numpy as np
import pytest

from ranking.model import RankerConfig
from ranking.scorer import RankScorer
from ranking.train import RankerOptions, ranker_inputs, train_ranker
from tests.ranking.test_ranker import ITEMS, genred_items, planted

CONFIG = RankerConfig(hidden_units=(8,), rating_units=(8,), max_history=2, members=2)


@pytest.fixture(scope="module")
def ranker():
    trained, _ = train_ranker(
        planted(), ITEMS, genred_items(), CONFIG, RankerOptions(epochs=2, batch_size=50)
    )
    return trained


def _request(items: list[str], history: list[str]) -> dict:
    """One user's request (one history row, the same user features on every row)."""
    examples = planted(len(items) // 2 + 1)
    inputs = ranker_inputs(examples)
    n = len(items)
    out = {name: np.asarray(values)[:n].copy() for name, values in inputs.items()}
    out["item_id"] = np.array(items, dtype=object)
    out["history"] = np.array([history], dtype=object)
    for name in ("time_since_last", "prev_impressions", "user_count", "user_mean"):
        out[name] = np.full(n, 3.0, np.float32)
    return out


def _with_item(scorer: RankScorer, item: str, genre_row: list[float], year: float) -> RankScorer:
    """A scorer trained-as-if ``item`` were in the vocabulary with a zero embedding and bias:
    what an added item must score as."""
    arrays = dict(scorer.arrays)
    for name, row in (("genres", genre_row), ("years", year)):
        arrays[name] = np.concatenate([arrays[name], np.asarray([row], arrays[name].dtype)])
    for name in [n for n in arrays if n.endswith("item_embedding") or n.endswith("item_bias")]:
        zero = np.zeros((1, *arrays[name].shape[1:]), arrays[name].dtype)
        arrays[name] = np.concatenate([arrays[name], zero])
    return RankScorer(
        scorer.config, [*ITEMS, item], arrays, scorer._cdf, scorer.demographic_vocabularies,
        scorer.genre_names,
    )  # fmt: skip


def test_an_added_item_scores_as_a_zero_embedding_with_its_genres_and_year(ranker):
    scorer = RankScorer.from_model(ranker)
    assert scorer.genre_names == ["Comedy", "Drama", "War"]
    request = _request(["A", "N", "C", "B"], ["", "D"])
    before = scorer(request)["logit"]
    # Unknown genre names are ignored; "War" is the third column.
    assert scorer.add_items(["N", "A"], [["War", "Sci-Fi"], ["Comedy"]], [2005.0, 1.0]) == ["N"]
    want = _with_item(scorer, "N", [0.0, 0.0, 1.0], 2005.0)
    for one_user in (True, False):  # the serving path (one history row) and the general one
        asked = request if one_user else {**request, "history": np.repeat(request["history"], 4, 0)}
        got = scorer(asked)
        np.testing.assert_allclose(got["logit"], want(asked)["logit"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["rating"], want(asked)["rating"], rtol=1e-5, atol=1e-6)
    after = scorer(request)["logit"]
    np.testing.assert_allclose(after[[0, 2, 3]], before[[0, 2, 3]], rtol=1e-6)  # A kept its own
    assert after[1] != before[1]  # N is no longer an ID with no metadata
    # In a history an added item is unknown, as before it was added.
    np.testing.assert_allclose(
        scorer(_request(["A", "C"], ["N", "D"]))["logit"],
        scorer(_request(["A", "C"], ["zzz", "D"]))["logit"],
        rtol=1e-6,
    )


def test_added_items_grow_the_tables_update_in_place_and_check_lengths(ranker):
    scorer = RankScorer.from_model(ranker)
    scorer(_request(["A", "B"], ["", "A"]))  # builds the serving tables first
    for i in range(40):  # one at a time, past several doublings
        assert scorer.add_items([f"n{i}"], [["Drama"]], [None]) == [f"n{i}"]
    assert scorer.positions(np.array(["n0", "n39", "A"])).tolist() == [6, 45, 2]

    def first(item: str) -> float:  # the logit of ``item`` in a list's first row
        return float(scorer(_request([item, "A"], ["", "A"]))["logit"][0])

    assert first("n0") == pytest.approx(first("n39"), rel=1e-6)  # the same metadata
    before = first("n39")
    assert scorer.add_items(["n0"], [["War"]], [1990.0]) == ["n0"]  # updated, same position
    assert scorer.positions(np.array(["n0"])).tolist() == [6]
    assert first("n39") == pytest.approx(before, rel=1e-6) and first("n0") != before
    want = _with_item(scorer, "n0", [0.0, 0.0, 1.0], 1990.0)
    assert first("n0") == pytest.approx(want(_request(["n0", "A"], ["", "A"]))["logit"][0], 1e-5)
    assert scorer.add_items(["bare"], [None], [None]) == ["bare"]  # no genres, no year
    assert not scorer._genres[scorer.positions(np.array(["bare"]))[0]].any()
    with pytest.raises(ValueError, match="item_ids, genres and years have 2, 1 and 2 entries"):
        scorer.add_items(["x", "y"], [["Drama"]], [None, None])


def test_reserved_rows_take_added_items_without_a_copy(ranker):
    scorer = RankScorer.from_model(ranker)
    scorer(_request(["A", "B"], ["", "A"]))  # builds the serving tables first
    trained = len(scorer._members[0].split.item_table)
    assert trained == len(ITEMS) + 2
    scorer.reserve(3)
    tables = [scorer._genres, *(m.split.item_table for m in scorer._members)]
    assert [len(t) for t in tables] == [trained + 3] * 3
    scorer.add_items(["x", "y", "z"], [["War"]] * 3, [None] * 3)
    after = [scorer._genres, *(m.split.item_table for m in scorer._members)]
    assert all(a is b for a, b in zip(tables, after, strict=True))  # written in place
    scorer.add_items(["w"], [["War"]], [None])  # past the room: copied, doubling
    assert len(scorer._genres) == 2 * (trained + 3) and scorer._genres is not tables[0]
    assert scorer.positions(np.array(["x", "w"])).tolist() == [trained, trained + 3]
