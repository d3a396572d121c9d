import json
import math

import numpy as np
import pytest

from serving.api import Recommender


@pytest.fixture(scope="module")
def rec(planted_ranked_artefact):
    return Recommender.load(planted_ranked_artefact)


def test_the_api_ranks_by_default(rec):
    assert rec.describe()["ranker"]
    rec.num_candidates = 4
    try:
        ranked = rec.recommend("u0", k=3)
        candidates = rec.recommend("u0", k=4, rank=False)
    finally:
        rec.num_candidates = 100
    assert ranked.ranked and len(ranked) == 3 and not candidates.ranked
    assert all(r.score > 0 for r in ranked)  # exp(logit)
    # 5 items are unseen; the ranker only ever reorders the generator's top 4
    assert set(ranked.item_ids) <= set(candidates.item_ids)
    assert not {"A", "B", "E"} & set(ranked.item_ids)  # seen items stay excluded


def test_ranked_order_is_the_scorer_order_over_the_candidates(rec):
    cands = rec.recommend("u5", k=100, rank=False)
    row = rec.users.rows(["u5"])
    stats = {c: float(v[0]) for c, v in rec.users.stats(row).items()}
    history = rec.users.histories(row)[0]
    features = {c: v[0] for c, v in rec.users.demographics(row).items()}
    ids, scores = rec.reranker.rerank(
        cands.item_ids, [r.score for r in cands], history, stats, features, 3
    )
    top = rec.recommend("u5", k=3)
    assert top.item_ids == ids
    np.testing.assert_allclose([r.score for r in top], scores, rtol=1e-6)
    assert all(math.isfinite(s) for s in scores) and scores == sorted(scores, reverse=True)


def test_batch_equals_single_with_ranking(rec):
    from serving.api import Query

    queries = [Query(user_id="u3", k=2), Query(history=["C"], k=3), Query(user_id="x", k=1)]
    for query, got in zip(queries, rec.recommend_batch(queries), strict=True):
        single = rec.recommend(query.user_id, history=query.history, k=query.k)
        assert got.item_ids == single.item_ids
        np.testing.assert_allclose([r.score for r in got], [r.score for r in single], rtol=1e-5)


def test_a_ranker_for_another_tower_is_refused(planted_ranked_artefact, tmp_path):
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(planted_ranked_artefact, copy)
    config = json.loads((copy / "ranker" / "config.json").read_text())
    config["tower_version"] = "some-other-tower"
    (copy / "ranker" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="was trained for tower some-other-tower"):
        Recommender.load(copy)


def test_loading_builds_the_scorers_serving_tables_before_the_first_request(
    planted_ranked_artefact,
):
    fresh = Recommender.load(planted_ranked_artefact)
    members = fresh.reranker.scorer._members
    assert len(members) == 2 and all(m.split is not None for m in members)
    assert all(m.split.item_table is not None for m in members)
