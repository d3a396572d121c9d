"""The new-user tower beside the main one: users with few rated items get their candidates from
it (the API, the explanations, HTTP), new items are placed in both, and training and warm
starts carry it inside the same artefact."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from export.candidates import export_candidates
from export.ranking_savedmodel import export_ranking_savedmodels
from export.rows import candidate_table, load_generators
from ranking.artefact import ranker_impressions, ranker_settings
from ranking.train import new_user_ranker_validated
from serving.api import Recommender
from serving.api_types import Query
from serving.cli import main
from serving.explain import because
from serving.http import HttpSettings, create_app
from serving.served import NewItemsUnsupported
from serving.service import LiveService, ModelSlot, Served
from serving.store import ItemRecord
from tests.conftest import planted_dataset
from tests.serving.test_cli import TINY, _run, _tiny_log
from towers.artefact import NEW_USER_DIR, artefact_version
from towers.coldstart import onboarding_order
from towers.content import ContentProjection, metadata_tokens
from towers.pipeline import retrain_artefact
from towers.presets import NEW_USER_MAX_RATINGS
from towers.retrieval import Retriever
from towers.train import TrainOptions
from towers.warmstart import WarmStart


def _alone(artefact) -> Recommender:
    return Recommender.load(artefact, users=False)


def test_a_short_history_is_answered_by_the_new_user_tower(two_towers):
    rec = _alone(two_towers)
    assert rec.new_user is not None and rec.new_user_max == NEW_USER_MAX_RATINGS == 15
    second, main_only = _alone(two_towers / NEW_USER_DIR), _alone(two_towers)
    main_only.new_user = None
    for history in ([], ["A"], ["A", "zzz"], ["C", "D", "E"]):  # unknown IDs do not count
        got = rec.recommend(history=history, k=5, rank=False)
        want = second.recommend(history=history, k=5, rank=False)
        assert got.generator == "new-user" and got.item_ids == want.item_ids
        np.testing.assert_allclose([r.score for r in got], [r.score for r in want], rtol=1e-6)
        assert main_only.recommend(history=history, k=5, rank=False).generator == "main"
    # The ranker rescores the new-user tower's candidates as it does the main one's.
    ranked = rec.recommend(history=["A"], k=3)
    assert ranked.ranked and ranked.generator == "new-user" and "A" not in ranked.item_ids


def test_above_the_limit_the_main_tower_answers(two_towers):
    main, second = (
        Retriever.from_artefact(two_towers),
        Retriever.from_artefact(two_towers / NEW_USER_DIR),
    )
    rec = _alone(two_towers)
    routed = Recommender(main, rec.items, new_user=second, new_user_max=1)
    assert routed.generator(1) is second and routed.generator(2) is main
    plain = Recommender(main, rec.items)
    for history in (["A", "B"], ["C", "D", "E"]):
        got = routed.recommend(history=history, k=4, rank=False)
        assert got.generator == "main"
        assert got.item_ids == plain.recommend(history=history, k=4, rank=False).item_ids
    # One batch mixing both generators answers each query as it would alone.
    batch = [{"history": ["A"]}, {"history": ["A", "B"]}, {"history": ["C"]}]
    alone = [routed.recommend(**q, k=4, rank=False).item_ids for q in batch]
    mixed = routed.recommend_batch([Query(history=q["history"], k=4, rank=False) for q in batch])
    assert [m.item_ids for m in mixed] == alone
    assert [m.generator for m in mixed] == ["new-user", "main", "new-user"]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_a_bad_limit_is_refused_naming_it(two_towers, bad):
    main = Retriever.from_artefact(two_towers)
    with pytest.raises(ValueError, match="new_user_max"):
        Recommender(main, _alone(two_towers).items, new_user=main, new_user_max=bad)


def test_because_uses_the_tower_that_answered(two_towers):
    rec, second = _alone(two_towers), _alone(two_towers / NEW_USER_DIR)
    history = ["A", "E"]
    items = rec.recommend(history=history, k=4, rank=False).item_ids
    assert because(rec, history, {}, items) == because(second, history, {}, items)


def test_new_items_are_placed_in_both_towers_from_their_own_projections(two_towers, tmp_path):
    copy = tmp_path / "artefact"
    shutil.copytree(two_towers, copy)
    served = Served.load(copy)
    record = ItemRecord("N", "Movie N (2024)", ("Comedy",), 2024)
    assert served.add_items([record]) == ["N"]
    tokens = [metadata_tokens(record.title, record.genres, record.year, record.tags)]
    for index, directory in (
        (served.recommender.retriever.index, copy),
        (served.recommender.new_user.index, copy / NEW_USER_DIR),
    ):
        want = ContentProjection.load(directory).predict(tokens)[0]
        np.testing.assert_allclose(index.vector("N"), want, rtol=1e-5)
    assert "N" in served.recommender.recommend(history=["A"], k=20, rank=False).item_ids

    # Without the new-user tower's projection nothing is placed anywhere.
    (copy / NEW_USER_DIR / "content.npz").unlink()
    served = Served.load(copy)
    with pytest.raises(NewItemsUnsupported, match="new-user tower"):
        served.add_items([replace(record, item_id="M")])
    assert "M" not in served.recommender.retriever.index
    assert "M" not in served.recommender.new_user.index


def test_without_the_new_user_projection_nothing_is_stored_or_swapped_in(
    two_towers, planted_store, tmp_path
):
    broken = tmp_path / "no-new-user-projection"
    shutil.copytree(two_towers, broken)
    (broken / NEW_USER_DIR / "content.npz").unlink()
    item = {"item_id": "N", "title": "Movie N (2024)", "genres": ["Comedy"], "year": 2024}
    key = {"X-API-Key": "secret"}
    service = LiveService(planted_store, ModelSlot(Served.load(broken)))
    with TestClient(create_app(service, HttpSettings(api_key="secret"))) as client:
        r = client.post("/v1/items", json=item, headers=key)
        assert r.status_code == 409 and "new-user tower" in r.json()["detail"]
    assert planted_store.items_since(0) == []  # refused before anything was stored

    service = LiveService(planted_store, ModelSlot(Served.load(two_towers)))
    with TestClient(create_app(service, HttpSettings(api_key="secret"))) as client:
        assert client.post("/v1/items", json=item, headers=key).status_code == 201
        r = client.post("/v1/admin/reload", json={"artefact": str(broken)}, headers=key)
        assert r.status_code == 422 and "new-user tower" in r.json()["detail"]
        assert client.get("/v1/items/N").status_code == 200  # still served


def test_http_names_the_generator_and_the_model_describes_it(two_towers, planted_store):
    service = LiveService(planted_store, ModelSlot(Served.load(two_towers)))
    with TestClient(create_app(service, HttpSettings(api_key="secret"))) as client:
        model = client.get("/v1/model").json()
        assert model["new_user_tower"] == {"max_ratings": 15, "items": 8, "ranker": "main"}
        body = client.post("/v1/recommendations", json={"history": ["A"], "k": 3}).json()
        assert body["generator"] == "new-user" and body["ranked"]
        user = client.get("/v1/users/u3/recommendations?k=3").json()  # 3 stored ratings
        assert user["generator"] == "new-user" and user["history_length"] == 3


def test_a_warm_start_carries_the_new_user_tower(two_towers, tmp_path):
    data = planted_dataset()
    later = data.interactions.assign(timestamp=data.interactions["timestamp"] + 10_000).head(40)
    grown = data.with_interactions(pd.concat([data.interactions, later], ignore_index=True))
    options = TrainOptions(epochs=2, batch_size=32, verbose=0)
    metrics = retrain_artefact(two_towers, grown, tmp_path / "child", options, WarmStart())
    child = tmp_path / "child" / NEW_USER_DIR
    lineage = json.loads((child / "config.json").read_text())["lineage"]
    assert lineage["parent_version"] == artefact_version(two_towers / NEW_USER_DIR)
    assert metrics["new_user"]["lineage"]["new_events"] == 40
    assert _alone(tmp_path / "child").new_user is not None


def test_train_candidates_trains_the_new_user_tower_on_request(tmp_path, capsys, caplog):
    log, out = _tiny_log(tmp_path / "log.csv"), tmp_path / "art"
    assert _run("train-candidates", log, out, f"--new-user-tower {TINY}") == 0
    printed = json.loads(capsys.readouterr().out)
    config = json.loads((out / NEW_USER_DIR / "config.json").read_text())["tower"]
    assert config["cold_examples_per_user"] == 100 and config["output_dim"] == 8  # flags apply
    assert printed["new_user"]["examples"] > printed["examples"]
    assert not (out / NEW_USER_DIR / "content.npz").exists()  # no metadata: neither has one
    assert any((out / "logs" / NEW_USER_DIR).rglob("events.out.tfevents*"))  # its own curves
    assert _alone(out).recommend(history=["A"], k=2).generator == "new-user"
    shards = ["train-candidates", "--shards", str(tmp_path), "--output", str(tmp_path / "a")]
    assert main([*shards, "--new-user-tower"]) == 2
    assert "--new-user-tower do not apply to --shards" in caplog.text


def test_the_batch_export_routes_as_the_api_does(two_towers, tmp_path):
    rec = Recommender.load(two_towers)  # with the training users' histories
    export_candidates(two_towers, tmp_path / "out", k=3)
    rows = pd.read_parquet(tmp_path / "out")
    for user in ("u0", "u41", "u79"):  # three ratings each: the new-user tower's candidates
        got = rec.recommend(user, k=3, rank=False)
        assert got.generator == "new-user"
        assert rows.loc[rows["user_id"] == user, "item_id"].tolist() == got.item_ids
    # A lower limit sends the longer histories to the main tower, in the API and the export.
    main, second = load_generators(two_towers)
    routed = Recommender(main, rec.items, new_user=second, new_user_max=1)
    histories = [["A"], ["A", "B"], [], ["C", "D", "E"]]
    table = candidate_table(
        main, ["a", "b", "c", "d"], histories, None, k=3, exclude_seen=True,
        model_version="v", new_user=second, new_user_max=1,
    ).to_pandas()  # fmt: skip
    for user, history in zip("abcd", histories, strict=True):
        want = routed.recommend(history=history, k=3, rank=False).item_ids
        assert table.loc[table["user_id"] == user, "item_id"].tolist() == want


def test_onboarding_spreads_over_the_new_user_towers_item_space(two_towers, monkeypatch):
    served = Served.load(two_towers)

    def order(tower, diversity: float, n: int = 8, pool: int = 300) -> list[str]:
        ids = [i for i in tower.index.item_ids if tower.encoder.knows(i)]
        vectors = np.stack([tower.index.vector(i)[:-1] for i in ids])
        items = served.recommender.items.set_index("item_id")
        counts = items["popularity"].reindex(ids).to_numpy()
        rows = onboarding_order(vectors, counts, n, pool=pool, diversity=diversity)
        return [ids[r] for r in rows]

    want = order(served.recommender.new_user, 0.9)
    assert want != order(served.recommender.retriever, 0.9)  # the two spaces disagree here
    assert served.onboarding(8, diversity=0.9) == want
    # By default, the setting validated for the tower that reads the ratings (the two presets'
    # picks, here set apart, and the lengths shortened to fit).
    monkeypatch.setattr("serving.served.ONBOARDING_DIVERSITY_NEW_USER", 0.5)
    monkeypatch.setattr("serving.served.ONBOARDING_DIVERSITY", 0.9)
    monkeypatch.setattr("serving.served.ONBOARDING_LENGTH_NEW_USER", 3)
    monkeypatch.setattr("serving.served.ONBOARDING_LENGTH", 5)
    assert served.onboarding(8) == order(served.recommender.new_user, 0.5)
    assert served.onboarding() == order(served.recommender.new_user, 0.5)[:3]
    served.recommender.new_user = None
    served.__dict__.pop("_onboarding")
    assert served.onboarding(8) == order(served.recommender.retriever, 0.9)
    assert served.onboarding() == order(served.recommender.retriever, 0.9)[:5]
    # Only the pool's vectors are fetched: a pool smaller than the catalogue picks the same list.
    monkeypatch.setattr("serving.served.ONBOARDING_MAX", 4)
    served.__dict__.pop("_onboarding")
    for diversity in (0.0, 0.9):
        assert served.onboarding(4, diversity) == order(
            served.recommender.retriever, diversity, n=4, pool=4
        )


def test_the_new_user_towers_own_ranker_rescores_its_candidates_only(two_rankers):
    rec = _alone(two_rankers)
    assert rec.new_user_reranker is not None and rec.new_user_reranker is not rec.reranker
    assert rec.reranker_for(rec.new_user) is rec.new_user_reranker
    assert rec.reranker_for(rec.retriever) is rec.reranker
    # The new-user tower with its ranker alone answers a short history the same way.
    second = Retriever.from_artefact(two_rankers / NEW_USER_DIR)
    alone = Recommender(second, rec.items, reranker=rec.new_user_reranker)
    for history in (["A"], ["C", "D"]):
        got = rec.recommend(history=history, k=3)
        assert got.generator == "new-user" and got.ranked
        assert got.item_ids == alone.recommend(history=history, k=3).item_ids
    # A long history goes to the main tower and the main ranker, as before.
    main_only = _alone(two_rankers)
    main_only.new_user = None
    long = rec.recommend(history=["A", "B"], k=3)
    rec.new_user_max = 1
    assert (
        rec.recommend(history=["A", "B"], k=3).item_ids
        == main_only.recommend(history=["A", "B"], k=3).item_ids
    )
    assert long.generator == "new-user"
    assert rec.describe()["new_user_tower"]["ranker"] == "own"
    # It learned from new users' impressions, with the configuration it was given.
    saved = two_rankers / NEW_USER_DIR / "ranker"
    meta = json.loads((saved / "config.json").read_text())
    assert meta["impressions"]["new_user"] and meta["impressions"]["max_position"] == 15
    assert ranker_impressions(saved) == {"num_candidates": 5, "events_per_user": 3}
    assert ranker_settings(saved)[0].tower_score_weight == 0.5
    # Where validation picked it: `nextwatch serve` trains one for ml-latest-small only.
    assert new_user_ranker_validated("ml-latest-small")
    assert not new_user_ranker_validated("ml-100k") and not new_user_ranker_validated(None)


def test_a_new_user_ranker_for_another_tower_version_is_refused_naming_it(two_rankers, tmp_path):
    copy = tmp_path / "artefact"
    shutil.copytree(two_rankers, copy)
    config = copy / NEW_USER_DIR / "ranker" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "tower_version": "other"}))
    with pytest.raises(ValueError, match="new_user/ranker was trained for tower other"):
        _alone(copy)
    # The SavedModel export refuses it too, before it writes any model.
    with pytest.raises(ValueError, match="new_user/ranker was trained for tower other"):
        export_ranking_savedmodels(copy, tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_a_retrain_trains_the_new_user_ranker_again_as_it_was(two_rankers, tmp_path):
    from serving.retrain import retrain_home
    from tests.serving.test_promotion import _home_with_new_events
    from towers.pipeline import DataSource

    home, registry, serving, flags = _home_with_new_events(tmp_path, two_rankers)
    files = dict(zip(flags[::2], flags[1::2], strict=True))
    source = DataSource(dataset=None, interactions=files["--interactions"],
                        items=files["--items"], users=files["--users"])  # fmt: skip
    options = TrainOptions(epochs=1, batch_size=8, verbose=0)
    decision = retrain_home(home, source, options=options, tolerance=1.0)
    child = registry.root / decision.version / NEW_USER_DIR / "ranker"
    parent = serving / NEW_USER_DIR / "ranker"
    assert ranker_settings(child) == ranker_settings(parent)
    assert ranker_impressions(child) == ranker_impressions(parent)
    meta = json.loads((child / "config.json").read_text())
    assert (
        meta["tower_version"] == artefact_version(child.parent) != artefact_version(parent.parent)
    )
    assert _alone(registry.root / decision.version).new_user_reranker is not None
