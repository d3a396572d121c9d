import threading

import numpy as np
import pytest

from towers.index import IndexParams, ItemIndex

# 5 items in 2-d plus a bias column: [w, b]. For the query [u, 1] with u = (1, 0) the logits are
# a: 3 + 0 = 3, b: 1 + 1 = 2, c: 0 - 1 = -1, d: -1 - 0.5 = -1.5, e: 2 + 0.5 = 2.5.
VECTORS = np.array(
    [[3, 0, 0], [1, 5, 1], [0, 1, -1], [-1, 2, -0.5], [2, 0, 0.5]],
    dtype=np.float32,
)
IDS = ["a", "b", "c", "d", "e"]
QUERY = np.array([[1, 0, 1]], dtype=np.float32)


@pytest.fixture()
def index():
    return ItemIndex.build(IDS, VECTORS)


def test_brute_force_scores_are_the_full_logit(index):
    ids, scores = index.search(QUERY, 3)
    assert ids.tolist() == [["a", "e", "b"]]
    np.testing.assert_allclose(scores, [[3.0, 2.5, 2.0]])


def test_k_larger_than_the_catalogue_returns_everything(index):
    ids, scores = index.search(QUERY, 50)
    assert ids.shape == (1, 5) and set(ids[0]) == set(IDS)
    assert np.all(np.diff(scores[0]) <= 0)


def test_batched_search_equals_single(index):
    queries = np.array([[1, 0, 1], [0, 1, 1]], dtype=np.float32)
    batch_ids, batch_scores = index.search(queries, 2)
    for row in range(2):
        ids, scores = index.search(queries[row : row + 1], 2)
        assert ids[0].tolist() == batch_ids[row].tolist()
        np.testing.assert_allclose(scores[0], batch_scores[row])
    assert batch_ids[1].tolist() == ["b", "d"]  # 5 + 1 and 2 - 0.5


def test_upsert_adds_and_replaces(index):
    index.upsert(["new"], np.array([[10, 0, 0]], np.float32))
    assert len(index) == 6 and "new" in index
    assert index.search(QUERY, 1)[0].tolist() == [["new"]]
    index.upsert(["a"], np.array([[-5, 0, 0]], np.float32))  # a sinks to the bottom
    ids, scores = index.search(QUERY, 6)
    assert ids[0][-1] == "a" and scores[0][-1] == pytest.approx(-5.0)
    np.testing.assert_allclose(index.vector("a"), [-5, 0, 0])


def test_vectors_returns_rows_in_the_order_asked(index):
    np.testing.assert_allclose(index.vectors(["e", "a", "e"]), VECTORS[[4, 0, 4]])
    assert index.vectors([]).shape == (0, 3)
    with pytest.raises(KeyError, match="'nope'"):
        index.vectors(["a", "nope"])


def test_delete_keeps_the_remaining_ids_right(index):
    index.delete(["a"])  # ScaNN moves the last row ("e") into a's place
    assert len(index) == 4 and "a" not in index
    ids, scores = index.search(QUERY, 4)
    assert ids.tolist() == [["e", "b", "c", "d"]]
    np.testing.assert_allclose(scores, [[2.5, 2.0, -1.0, -1.5]])
    np.testing.assert_allclose(index.vector("e"), VECTORS[4])
    index.delete(["b", "c"])
    assert sorted(index.item_ids) == ["d", "e"]
    assert index.search(QUERY, 5)[0].tolist() == [["e", "d"]]


def test_save_and_load_give_equal_results_after_changes(index, tmp_path):
    index.upsert(["new"], np.array([[0, 0, 9]], np.float32))
    index.delete(["b"])
    before = index.search(QUERY, 5)
    loaded = ItemIndex.load(index.save(tmp_path / "index"))
    after = loaded.search(QUERY, 5)
    assert before[0].tolist() == after[0].tolist()
    np.testing.assert_allclose(before[1], after[1])
    assert sorted(loaded.item_ids) == sorted(index.item_ids)
    loaded.upsert(["x"], np.array([[100, 0, 0]], np.float32))  # still incremental after load
    assert loaded.search(QUERY, 1)[0].tolist() == [["x"]]


def test_tree_ah_index_finds_an_items_own_direction(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(8, 16)) * 3
    vectors = (centers[rng.integers(0, 8, 4000)] + rng.normal(size=(4000, 16))).astype(np.float32)
    ids = [f"i{n}" for n in range(4000)]
    params = IndexParams.for_size(4000, mode="tree_ah")
    index = ItemIndex.build(ids, vectors, params)
    assert index.params.mode == "tree_ah"
    # The item with the largest norm along its own direction is its own best match.
    target = int(np.argmax(np.linalg.norm(vectors, axis=1)))
    got, _ = index.search(vectors[target : target + 1] * 10, 10)
    assert got[0][0] == f"i{target}"
    index.upsert(["far"], vectors[target] * 100)
    assert index.search(vectors[target : target + 1], 1)[0][0][0] == "far"
    assert ItemIndex.load(index.save(tmp_path / "t")).params == params


def test_params_are_derived_from_the_size():
    assert IndexParams.for_size(9_724).mode == "brute_force"
    big = IndexParams.for_size(1_000_000)
    assert (big.mode, big.num_leaves, big.leaves_to_search, big.reorder) == (
        "tree_ah",
        1000,
        50,
        1000,
    )
    with pytest.raises(ValueError, match="mode must be"):
        IndexParams.for_size(10, mode="hnsw")


def test_bad_input_is_named(index):
    with pytest.raises(ValueError, match="shape"):
        ItemIndex.build(["a"], np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="empty"):
        ItemIndex.build([], np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="duplicates"):
        ItemIndex.build(["a", "a"], np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="queries must have shape"):
        index.search(np.zeros((1, 2), np.float32), 1)
    with pytest.raises(ValueError, match="k must be"):
        index.search(QUERY, 0)
    with pytest.raises(ValueError, match="vectors must have shape"):
        index.upsert(["z"], np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        index.upsert(["z"], np.full((1, 3), np.nan, np.float32))
    with pytest.raises(KeyError, match="not in the index"):
        index.delete(["nope", "a"])
    assert "a" in index  # nothing was deleted
    with pytest.raises(ValueError, match="every item"):
        index.delete(IDS)
    with pytest.raises(FileNotFoundError, match="no saved item index"):
        ItemIndex.load("/nonexistent")


def test_one_string_is_not_a_list_of_ids_and_nan_is_refused_everywhere(index):
    with pytest.raises(TypeError, match="not one string"):
        index.delete("ab")  # would otherwise delete "a" and "b"
    with pytest.raises(TypeError, match="not one string"):
        index.upsert("z", np.zeros((1, 3), np.float32))
    assert all(i in index for i in IDS)
    rows = np.ones((3, 3), np.float32)
    rows[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"NaN or infinite values in 1 row\(s\): \['y'\]"):
        ItemIndex.build(["x", "y", "w"], rows)
    with pytest.raises(ValueError, match="queries has NaN"):
        index.search(np.full((1, 3), np.nan, np.float32), 1)


def test_concurrent_searches_and_upserts_are_safe(index):
    errors: list[BaseException] = []

    def search() -> None:
        try:
            for _ in range(200):
                ids, _ = index.search(QUERY, 2)
                assert ids[0][0] in ("a", "top")
        except BaseException as exc:  # noqa: BLE001  (collected for the main thread)
            errors.append(exc)

    threads = [threading.Thread(target=search) for _ in range(4)]
    for t in threads:
        t.start()
    for n in range(50):
        index.upsert([f"n{n}"], np.array([[0, 0, -10]], np.float32))
    index.upsert(["top"], np.array([[100, 0, 0]], np.float32))
    for t in threads:
        t.join()
    assert not errors
    assert len(index) == 5 + 51


def test_k_of_the_wrong_kind_is_named_and_an_empty_batch_is_empty(index):
    query = np.ones((1, index.dim), np.float32)
    for k in (0, 2.5, "3", True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            index.search(query, k)
    ids, scores = index.search(np.zeros((0, index.dim), np.float32), 3)
    assert ids.shape == (0, 3) and scores.shape == (0, 3)


def test_search_among_scores_a_subset_exactly_and_follows_changes(index):
    # Logits a 3, b 2, c -1, d -1.5, e 2.5 (above); "zzz" is not indexed and is ignored.
    among = frozenset({"b", "c", "d", "zzz"})
    ids, scores = index.search_among(QUERY, 2, among)
    assert ids.tolist() == [["b", "c"]]
    np.testing.assert_allclose(scores, [[2.0, -1.0]])
    ids, _ = index.search_among(np.repeat(QUERY, 2, axis=0), 10, among)  # k past the subset
    assert ids.tolist() == [["b", "c", "d"]] * 2
    # The subset's rows are kept between calls, and an upsert or a delete makes them stale.
    index.upsert(["d"], np.array([[9, 0, 0]], np.float32))
    assert index.search_among(QUERY, 1, among)[0].tolist() == [["d"]]
    index.delete(["d"])
    assert index.search_among(QUERY, 5, among)[0].tolist() == [["b", "c"]]
    assert index.search_among(QUERY, 3, frozenset({"zzz"}))[0].shape == (1, 0)
    assert index.search_among(QUERY, 1, {"b", "c"})[0].tolist() == [["b"]]  # any set of IDs
    with pytest.raises(ValueError, match="queries must have shape"):
        index.search_among(QUERY[:, :2], 1, among)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search_among(QUERY, 0, among)


def test_search_among_equals_a_brute_force_search_restricted_to_the_subset():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(300, 5)).astype(np.float32)
    ids = [f"i{n}" for n in range(300)]
    index = ItemIndex.build(ids, vectors)
    among = frozenset(ids[::7])
    queries = rng.normal(size=(4, 5)).astype(np.float32)
    got_ids, got_scores = index.search_among(queries, 12, among)
    all_ids, all_scores = index.search(queries, 300)
    for row in range(4):
        keep = [j for j, i in enumerate(all_ids[row]) if i in among][:12]
        assert got_ids[row].tolist() == all_ids[row][keep].tolist()
        np.testing.assert_allclose(got_scores[row], all_scores[row][keep], rtol=1e-5)
