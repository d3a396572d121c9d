from types import SimpleNamespace

import numpy as np
import pytest

from towers.index import ItemIndex
from towers.retrieval import Retriever, cap_placed, placed_cap

# 6 items on a line: for the query [1, 1] ([u, 1] with u = 1) item i scores i (w = i, b = 0).
IDS = ["i0", "i1", "i2", "i3", "i4", "i5"]
VECTORS = np.array([[i, 0] for i in range(6)], np.float32)
QUERY = np.array([[1.0, 1.0]], np.float32)


@pytest.fixture()
def retriever():
    encoder = SimpleNamespace(output_dim=1)  # search() needs no encoder, only its width
    return Retriever(encoder, ItemIndex.build(IDS, VECTORS))


def test_top_k_excludes_and_filters(retriever):
    (got,) = retriever.search(QUERY, 2)
    assert got.item_ids == ["i5", "i4"] and got.scores == [5.0, 4.0]
    (got,) = retriever.search(QUERY, 2, [{"i5", "i3"}])
    assert got.item_ids == ["i4", "i2"]
    (got,) = retriever.search(QUERY, 2, None, frozenset({"i0", "i1", "i3"}))
    assert got.item_ids == ["i3", "i1"]


def test_short_rows_are_searched_again_until_k_or_the_whole_catalogue(retriever):
    # k = 1 fetches 1 + 3 = 4 at first: excluding the top 5 needs a second, wider search.
    (got,) = retriever.search(QUERY, 1, [{"i5", "i4", "i3", "i2", "i1"}])
    assert got.item_ids == ["i0"]
    # Only 2 items are eligible: fewer than k come back, best first.
    (got,) = retriever.search(QUERY, 10, [{"i5", "i4", "i3", "i2"}])
    assert got.item_ids == ["i1", "i0"]
    rows = retriever.search(np.repeat(QUERY, 2, axis=0), 1, [set(), {"i5", "i4", "i3"}])
    assert [r.item_ids for r in rows] == [["i5"], ["i2"]]


def test_bad_arguments_are_named(retriever):
    with pytest.raises(ValueError, match="k must be"):
        retriever.search(QUERY, 0)
    with pytest.raises(ValueError, match="exclude has 2 entries for 1 queries"):
        retriever.search(QUERY, 1, [set(), set()])
    with pytest.raises(ValueError, match="dimensions"):
        Retriever(SimpleNamespace(output_dim=5), retriever.index)


def test_placed_cap_is_the_share_of_k_rounded_down_and_at_least_one():
    assert [placed_cap(k, 0.1) for k in (1, 9, 10, 19, 20, 100)] == [1, 1, 1, 1, 2, 10]
    assert placed_cap(10, 0.25) == 2 and placed_cap(10, 1.0) == 10 and placed_cap(10, 0) == 1
    assert placed_cap(10, None) is None
    for share in (-0.1, 1.5, "0.1", True, float("nan")):
        with pytest.raises(ValueError, match="placed share must be a number in \\[0, 1\\]"):
            placed_cap(10, share)


def test_placed_items_are_held_to_the_cap_and_the_list_filled_with_trained_ones(retriever):
    # Three items placed from metadata above every trained one: p9 > p8 > p7 > i5 > ... > i0.
    vectors = np.array([[9, 0], [8, 0], [7, 0]], np.float32)
    retriever.place(["p9", "p8", "p7"], vectors)
    assert retriever.placed == {"p9", "p8", "p7"}
    (got,) = retriever.search(QUERY, 4)
    assert got.item_ids == ["p9", "p8", "p7", "i5"]
    (got,) = retriever.search(QUERY, 4, max_placed=1)
    assert got.item_ids == ["p9", "i5", "i4", "i3"] and got.scores == [9.0, 5.0, 4.0, 3.0]
    (got,) = retriever.search(QUERY, 4, [{"p9"}], max_placed=1)
    assert got.item_ids == ["p8", "i5", "i4", "i3"]
    (got,) = retriever.search(QUERY, 4, max_placed=0)
    assert got.item_ids == ["i5", "i4", "i3", "i2"]
    # The cap may leave a row short of k: it is searched again, wider (k = 7 fetches 7 first).
    (got,) = retriever.search(QUERY, 7, max_placed=1)
    assert got.item_ids == ["p9", "i5", "i4", "i3", "i2", "i1", "i0"]
    # A small filter is scored exactly over its items, placed ones past the cap left out.
    allowed = frozenset({"p9", "p8", "i1", "i0"})
    (got,) = retriever.search(QUERY, 3, None, allowed, max_placed=1)
    assert got.item_ids == ["p9", "i1", "i0"]
    with pytest.raises(ValueError, match="max_placed must be an integer >= 0 or None"):
        retriever.search(QUERY, 3, max_placed=-1)


def test_cap_placed_keeps_the_order_and_drops_placed_items_past_the_cap():
    ids, scores = ["p1", "a", "p2", "b", "p3", "c"], [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    assert cap_placed(ids, scores, 4, frozenset({"p1", "p2", "p3"}), 1) == (
        ["p1", "a", "b", "c"], [6.0, 5.0, 3.0, 1.0],
    )  # fmt: skip
    assert cap_placed(ids, scores, 3, frozenset({"p1", "p2", "p3"}), None) == (
        ["p1", "a", "p2"], [6.0, 5.0, 4.0],
    )  # fmt: skip
    assert cap_placed(ids, scores, 3, frozenset(), 0) == (["p1", "a", "p2"], [6.0, 5.0, 4.0])


def tree_retriever(rng: np.random.Generator, items: int = 4000):
    """A retriever over a tree-AH index of ``items`` random 9-d vectors ``i0``, ``i1``, ..."""
    from towers.index import IndexParams

    vectors = rng.normal(size=(items, 9)).astype(np.float32)
    ids = [f"i{n}" for n in range(items)]
    index = ItemIndex.build(ids, vectors, IndexParams.for_size(items, mode="tree_ah"))
    return Retriever(SimpleNamespace(output_dim=8), index), ids, vectors


def test_a_tree_index_never_pads_results_with_missing_or_repeated_items():
    rng = np.random.default_rng(1)
    retriever, ids, _ = tree_retriever(rng)
    query = rng.normal(size=(2, 9)).astype(np.float32)
    seen = set(ids[:500])
    batch = retriever.search(query, 1200, [seen, set()])
    for got in batch:
        assert len(got.item_ids) == len(set(got.item_ids)) == 1200
        assert all(np.isfinite(got.scores)) and "" not in got.item_ids
    assert not seen & set(batch[0].item_ids)
    # One query takes ScaNN's single-query path: the same answer as in the batch.
    assert retriever.search(query[:1], 1200, [seen])[0].item_ids == batch[0].item_ids


def test_a_small_filter_is_scored_exactly_and_a_large_one_through_the_search(
    retriever, monkeypatch
):
    calls = []
    search_among = retriever.index.search_among
    monkeypatch.setattr(retriever.index, "search_among",
                        lambda *a: calls.append(a[2]) or search_among(*a))  # fmt: skip
    # Half the catalogue (3 of 6): scored exactly, exclusions applied after.
    (got,) = retriever.search(QUERY, 2, [{"i5"}], frozenset({"i1", "i3", "i5"}))
    assert got.item_ids == ["i3", "i1"] and got.scores == [3.0, 1.0] and len(calls) == 1
    # More than half: through the index search, with the same kind of answer.
    (got,) = retriever.search(QUERY, 2, [{"i5"}], frozenset({"i1", "i2", "i3", "i5"}))
    assert got.item_ids == ["i3", "i2"] and len(calls) == 1


def test_a_filtered_search_on_a_tree_index_is_exact():
    rng = np.random.default_rng(2)
    retriever, ids, vectors = tree_retriever(rng)
    query = rng.normal(size=(1, 9)).astype(np.float32)
    allowed = frozenset(ids[::40])  # 100 items, as a rare genre
    (got,) = retriever.search(query, 10, [set(ids[:400])], allowed)
    eligible = [n for n in range(4000) if ids[n] in allowed and n >= 400]
    want = sorted(eligible, key=lambda n: -float(vectors[n] @ query[0]))[:10]
    assert got.item_ids == [ids[n] for n in want]
