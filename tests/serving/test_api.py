import threading

import numpy as np
import pytest

from serving.api import Query, Recommender, UnknownItemError

U0_FEATURES = {"age": 20.0, "gender": "M", "occupation": "artist", "zip_prefix": "0"}


@pytest.fixture(scope="module")
def rec(planted_artefact):
    return Recommender.load(planted_artefact)


def _pairs(result):
    return [(r.item_id, round(r.score, 5)) for r in result]


def test_a_known_user_is_their_stored_history_and_features_with_seen_items_left_out(rec):
    result = rec.recommend("u0", k=8)  # u0 watched A, B, E
    assert result.known_user and result.user_id == "u0"
    assert set(result.item_ids) == {"C", "D", "F", "G", "H"}
    assert _pairs(result) == _pairs(rec.recommend(history=["A", "B", "E"], features=U0_FEATURES))
    assert result.item_ids[0] in {"F", "G", "H"}  # the planted third watch
    assert rec.recommend("u0", k=8, exclude_seen=False).item_ids[:1] != ["A"]


def test_results_carry_id_score_title_and_genres(rec):
    (top,) = rec.recommend(history=["A"], k=1)
    assert (top.item_id, top.title, top.genres) == ("B", "Movie B (1990)", ("Comedy",))
    assert isinstance(top.score, float)


def test_unknown_user_is_a_new_user_with_an_empty_history(rec):
    unknown = rec.recommend("nobody", k=8)
    assert not unknown.known_user and len(unknown) == 8
    assert _pairs(unknown) == _pairs(rec.recommend(history=[], k=8))


def test_unknown_history_items_are_ignored_and_reported(rec):
    result = rec.recommend(history=["A", "zzz"], k=3)
    assert result.ignored_history == ["zzz"]
    assert _pairs(result) == _pairs(rec.recommend(history=["A"], k=3))


def test_k_larger_than_the_catalogue_returns_every_eligible_item(rec):
    assert len(rec.recommend(history=[], k=1000)) == 8
    assert len(rec.recommend(history=["A", "B"], k=1000)) == 6


def test_exclude_and_genre_filter(rec):
    horror = rec.recommend(history=["A"], k=10, genres=["horror"])  # case-insensitive
    assert set(horror.item_ids) == set("EFGH")
    fewer = rec.recommend(history=["A"], k=10, genres=["Horror", "Drama"], exclude=["E", "C"])
    assert set(fewer.item_ids) == {"D", "F", "G", "H"}
    assert rec.genres == ["Comedy", "Drama", "Horror"]
    # A batch query's bare strings are one ID and one genre, as in recommend.
    (batched,) = rec.recommend_batch([Query(history=["A"], k=10, genres="horror", exclude="E")])
    assert set(batched.item_ids) == set("FGH")
    with pytest.raises(ValueError, match="history must be a sequence of item IDs, got 'AB'"):
        rec.recommend_batch([Query(history="AB")])


def test_similar_items(rec):
    similar = rec.similar_items("A", k=3)
    assert len(similar) == 3 and "A" not in [s.item_id for s in similar]
    assert len(rec.similar_items("A", k=100)) == 7


def test_bad_arguments_are_named(rec):
    for k in (0, -1, "3", 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            rec.recommend(history=[], k=k)
    with pytest.raises(ValueError, match="genres has unknown names \\['Western'\\]"):
        rec.recommend(history=[], genres=["Western"])
    with pytest.raises(ValueError, match="features has unknown names \\['height'\\]"):
        rec.recommend(history=[], features={"height": 180})
    with pytest.raises(ValueError, match="features\\['age'\\] must be a number"):
        rec.recommend(history=[], features={"age": -3})
    with pytest.raises(ValueError, match="history must be a sequence"):
        rec.recommend(history="AB")
    with pytest.raises(UnknownItemError, match="item_id 'zzz' is not in the catalogue"):
        rec.similar_items("zzz")


def test_batch_equals_single(rec):
    queries = [
        Query(user_id="u41", k=3),
        Query(history=["C"], k=2, genres=("Drama", "Comedy")),
        Query(user_id="nobody", history=["A"], k=5, exclude=("B",)),
        Query(history=[], features={"age": 30, "gender": "F"}, k=4),
    ]
    batch = rec.recommend_batch(queries)
    for query, got in zip(queries, batch, strict=True):
        single = rec.recommend(
            query.user_id, history=query.history, features=query.features, k=query.k,
            exclude=query.exclude, genres=query.genres,
        )  # fmt: skip
        # The same items in the same order; the scores agree to float32 rounding (a batch's
        # matrix products may round their last bits differently from a batch of one).
        assert [r.item_id for r in got] == [r.item_id for r in single]
        np.testing.assert_allclose(
            [r.score for r in got], [r.score for r in single], rtol=1e-5, atol=1e-6
        )
        assert got.known_user == single.known_user


def test_concurrent_calls_equal_serial_ones(rec):
    users = [f"u{u}" for u in range(0, 80, 7)]
    expected = {u: _pairs(rec.recommend(u, k=4)) for u in users}
    errors: list[str] = []

    def worker() -> None:
        for _ in range(20):
            for u in users:
                if _pairs(rec.recommend(u, k=4)) != expected[u]:
                    errors.append(u)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_unknown_ids_never_push_known_items_out_of_the_bag(rec):
    # max_history is 3: the unknown ID must not take one of the three slots.
    with_unknown = rec.recommend(history=["A", "B", "C", "zzz"], k=5)
    assert _pairs(with_unknown) == _pairs(rec.recommend(history=["A", "B", "C"], k=5))


def test_a_bare_string_is_one_genre_or_one_id(rec):
    assert set(rec.recommend(history=["A"], k=10, genres="Horror").item_ids) == set("EFGH")
    assert "E" not in rec.recommend(history=["A"], k=10, exclude="E").item_ids


def test_numpy_numbers_are_valid_features(rec):
    import numpy as np

    assert len(rec.recommend(history=[], features={"age": np.float32(30)}, k=2)) == 2


def test_a_stored_history_with_a_repeat_counts_it_once_in_the_api_and_the_export(
    planted_artefact, tmp_path
):
    import shutil

    import pandas as pd

    from export.candidates import export_candidates

    art = tmp_path / "art"
    shutil.copytree(planted_artefact, art)
    users = pd.read_parquet(art / "users.parquet")
    row = users.index[users["user_id"] == "u0"][0]
    users.at[row, "history"] = ["E", "A", "B", "E"]  # E watched again, last
    users.to_parquet(art / "users.parquet", index=False)
    rec = Recommender.load(art)
    stored = rec.recommend("u0", k=4, rank=False)
    asked = rec.recommend(history=["A", "B", "E"], features=U0_FEATURES, k=4, rank=False)
    assert _pairs(stored) == _pairs(asked)
    export_candidates(art, tmp_path / "out", k=4, users=["u0"])
    exported = pd.read_parquet(tmp_path / "out")
    assert exported["item_id"].tolist() == asked.item_ids


def test_arguments_of_the_wrong_kind_are_named(rec):
    with pytest.raises(ValueError, match="exclude must be a sequence of strings, got None"):
        rec.recommend(history=["A"], exclude=None)
    with pytest.raises(ValueError, match="features must be a mapping"):
        rec.recommend(history=["A"], features="x")
    assert rec.recommend(history=["A"], exclude={"B"}, k=2).item_ids[0] != "B"


def test_a_genre_filter_finds_an_item_added_after_the_filter_was_first_asked(planted_artefact):
    import pandas as pd

    rec = Recommender.load(planted_artefact)
    assert "Z" not in rec.recommend(history=["A"], k=10, genres=["Horror"]).item_ids
    index = rec.retriever.index
    index.upsert(["Z"], index.vector("E"))
    rec.add_items(pd.DataFrame({"item_id": ["Z"], "title": ["Z"], "genres": [["Horror"]]}))
    assert "Z" in rec.recommend(history=["A"], k=10, genres=["horror"]).item_ids


def test_items_placed_from_metadata_take_at_most_their_share_of_each_list(
    planted_ranked_artefact,
):
    import pandas as pd

    rec = Recommender.load(planted_ranked_artefact)
    top = rec.recommend(history=["A"], k=1, rank=False).item_ids[0]
    placed = ["P1", "P2", "P3"]  # three items placed far above everything for this history
    vectors = np.stack([rec.retriever.index.vector(top) * f for f in (4.0, 3.0, 2.0)])
    rec.retriever.place(placed, vectors)
    rec.add_items(pd.DataFrame({"item_id": placed, "title": placed, "genres": [["Horror"]] * 3}))
    assert rec.placed_share == 0.1  # the default: at most one in ten, and at least one

    def new(result):
        return [i for i in result.item_ids if i in placed]

    assert new(rec.recommend(history=["A"], k=4, rank=False)) == ["P1"]
    assert new(rec.recommend(history=["A"], k=4)) in (["P1"], ["P2"], ["P3"])  # ranked
    assert new(rec.recommend(history=["A"], k=4, genres=["Horror"], rank=False)) == ["P1"]
    assert len(rec.recommend(history=["A"], k=4, rank=False)) == 4  # filled with trained items
    assert len([r for r in rec.similar_items(top, k=4) if r.item_id in placed]) == 1
    rec.placed_share = None
    assert rec.recommend(history=["A"], k=4, rank=False).item_ids[:3] == placed
    rec.placed_share = 0.5
    assert new(rec.recommend(history=["A"], k=4, rank=False)) == ["P1", "P2"]
    with pytest.raises(ValueError, match="placed share must be a number in \\[0, 1\\]"):
        Recommender(rec.retriever, rec.items, placed_share=2.0)


@pytest.mark.parametrize(
    ("stats", "message"),
    [({"rating_mean": float("inf")}, r"stats\['rating_mean'\] must be a finite number"),
     ({"rating_count": -1}, r"stats\['rating_count'\] must be a finite number >= 0"),
     ({"rating_mean": "4.5x"}, r"stats\['rating_mean'\] must be a number"),
     ({"ratings_mean": 4.0}, r"stats has unknown names \['ratings_mean'\]"),
     ([("rating_mean", 4.0)], "stats must be a mapping")],
)  # fmt: skip
def test_a_querys_rating_stats_are_checked_since_the_ranker_reads_them(rec, stats, message):
    with pytest.raises(ValueError, match=message):
        rec.recommend_batch([Query(history=["A"], stats=stats)])


def test_flags_and_the_candidate_count_are_checked(rec, planted_artefact):
    with pytest.raises(TypeError, match="exclude_seen must be True or False, got 'False'"):
        rec.recommend(history=["A"], exclude_seen="False")
    with pytest.raises(TypeError, match="rank must be True or False"):
        rec.recommend(history=["A"], rank=1)
    for bad in (50.5, "100", -5):
        with pytest.raises(ValueError, match="num_candidates must be a positive integer"):
            Recommender(rec.retriever, rec.items, num_candidates=bad)
