"""New items over HTTP: placed from metadata, stored, retrievable at once, on every worker and
across model swaps; and the onboarding list."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.http import HttpSettings, create_app
from serving.service import ONBOARDING_MAX, LiveService, ModelSlot, Served
from serving.store import ItemRecord
from tests.conftest import planted_dataset

KEY = {"X-API-Key": "secret"}
COMEDY = {"item_id": "N", "title": "Movie N (2024)", "genres": ["Comedy"], "year": 1995}


@pytest.fixture()
def store(planted_store):
    return planted_store


def _client(store, artefact, **service_options) -> TestClient:
    service = LiveService(store, ModelSlot(Served.load(artefact)), **service_options)
    return TestClient(create_app(service, HttpSettings(api_key="secret")))


@pytest.fixture()
def client(store, planted_ranked_artefact):
    with _client(store, planted_ranked_artefact) as c:
        yield c


def _candidates(client, history: list[str]) -> dict[str, float]:
    body = {"history": history, "k": 20, "rank": False}
    response = client.post("/v1/recommendations", json=body)
    assert response.status_code == 200, response.text
    return {i["item_id"]: i["score"] for i in response.json()["items"]}


def test_a_new_item_is_placed_from_metadata_and_retrievable_at_once(client, store):
    assert "N" not in _candidates(client, ["A"])
    response = client.post("/v1/items", json=COMEDY, headers=KEY)
    assert response.status_code == 201, response.text
    out = response.json()
    assert out["created"] and out["item_id"] == "N" and out["sequence"] == 1
    assert "g:comedy" in out["known_tokens"] and out["popularity"] == 0.0
    # Retrievable by the next request, and placed with the comedies: it scores higher for a
    # user who watched comedy A than for one who watched drama C.
    assert _candidates(client, ["A"])["N"] > _candidates(client, ["C"])["N"]
    assert [i.item_id for i in store.items_since(0)] == ["N"]
    # The catalogue knows it: lookup, title search, genre filter, similar items, events.
    assert client.get("/v1/items/N").json()["title"] == "Movie N (2024)"
    assert [i["item_id"] for i in client.get("/v1/items?q=movie n").json()] == ["N"]
    filtered = client.get("/v1/users/u40/recommendations?genres=comedy&k=5&rank=false").json()
    assert "N" in [i["item_id"] for i in filtered["items"]]
    assert client.get("/v1/items/N/similar?k=3").status_code == 200
    event = {"user_id": "web-1", "item_id": "N", "type": "rating", "rating": 4}
    assert client.post("/v1/events", json=event, headers=KEY).status_code == 201


def test_posting_an_added_item_again_replaces_it(client):
    assert client.post("/v1/items", json=COMEDY, headers=KEY).status_code == 201
    as_comedy = _candidates(client, ["A"])["N"]
    horror = {**COMEDY, "genres": ["Horror"], "title": "Movie N: Director's Cut"}
    response = client.post("/v1/items", json=horror, headers=KEY)
    assert response.status_code == 200 and not response.json()["created"]
    assert response.json()["sequence"] == 2
    assert client.get("/v1/items/N").json()["genres"] == ["Horror"]
    assert _candidates(client, ["A"])["N"] < as_comedy  # its vector moved with its metadata


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({**COMEDY, "item_id": "A"}, 409, "trained item"),
        ({**COMEDY, "title": "  "}, 422, "title"),
        ({**COMEDY, "year": 99}, 422, "year"),
        ({**COMEDY, "genres": "Comedy"}, 422, "genres"),
        ({**COMEDY, "rating": 5}, 422, "rating"),
        ({"title": "No id"}, 422, "item_id"),
    ],
)
def test_bad_items_are_refused_naming_the_field(client, store, body, status, field):
    response = client.post("/v1/items", json=body, headers=KEY)
    assert response.status_code == status and field in response.json()["detail"]
    assert store.items_since(0) == []


def test_adding_items_needs_the_key(client):
    assert client.post("/v1/items", json=COMEDY).status_code == 401


def test_a_model_without_a_projection_refuses_new_items(store, planted_ranked_artefact, tmp_path):
    old = tmp_path / "old-artefact"
    shutil.copytree(planted_ranked_artefact, old)
    (old / "content.npz").unlink()
    with _client(store, old) as c:
        response = c.post("/v1/items", json=COMEDY, headers=KEY)
    assert response.status_code == 409 and "content projection" in response.json()["detail"]
    assert store.items_since(0) == []


def test_a_swap_to_a_model_that_cannot_place_the_added_items_is_refused(
    client, store, planted_ranked_artefact, tmp_path
):
    assert client.post("/v1/items", json=COMEDY, headers=KEY).status_code == 201
    old = tmp_path / "old-artefact"
    shutil.copytree(planted_ranked_artefact, old)
    (old / "content.npz").unlink()
    r = client.post("/v1/admin/reload", json={"artefact": str(old)}, headers=KEY)
    assert r.status_code == 422 and "holds 1 item(s) added from metadata" in r.json()["detail"]
    assert "N" in _candidates(client, ["A"])  # the old model keeps serving it
    event = {"user_id": "x", "item_id": "N", "rating": 4}
    assert client.post("/v1/events", json=event, headers=KEY).status_code == 201


def test_every_worker_and_every_swapped_in_model_gets_the_stored_items(
    store, planted_ranked_artefact, planted_artefact
):
    with (
        _client(store, planted_ranked_artefact) as one,
        _client(store, planted_ranked_artefact, item_sync_interval_s=0.0) as two,
    ):
        assert one.post("/v1/items", json=COMEDY, headers=KEY).status_code == 201
        assert "N" in _candidates(two, ["A"])  # another process on the same store
        swapped = one.post(
            "/v1/admin/reload", json={"artefact": str(planted_artefact)}, headers=KEY
        )
        assert swapped.status_code == 200
        assert "N" in _candidates(one, ["A"])  # the new model placed it before serving


def test_onboarding_lists_distinct_trained_items(client, monkeypatch):
    response = client.get("/v1/onboarding?n=4")
    assert response.status_code == 200
    ids = [i["item_id"] for i in response.json()["items"]]
    assert len(ids) == len(set(ids)) == 4 and set(ids) <= set("ABCDEFGH")
    assert client.post("/v1/items", json=COMEDY, headers=KEY).status_code == 201
    everything = [
        i["item_id"] for i in client.get(f"/v1/onboarding?n={ONBOARDING_MAX}").json()["items"]
    ]
    assert sorted(everything) == list("ABCDEFGH")  # never an item nobody has rated
    assert client.get("/v1/onboarding?n=0").status_code == 422
    monkeypatch.setattr("serving.served.ONBOARDING_LENGTH", 3)  # the default n, shortened
    assert len(client.get("/v1/onboarding").json()["items"]) == 3
    assert client.get(f"/v1/onboarding?n={ONBOARDING_MAX + 1}").status_code == 422


def test_a_swapped_in_model_has_its_default_onboarding_list_ready(planted_ranked_artefact):
    slot = ModelSlot(Served.load(planted_ranked_artefact))
    _, new = slot.reload(planted_ranked_artefact)
    ready = dict(new.__dict__["_onboarding"])  # picked while warming, before the swap
    assert len(ready) == 1
    new.onboarding()
    assert new.__dict__["_onboarding"] == ready  # the default list was the one picked


def test_onboarding_picks_a_diversity_once_to_two_decimals(planted_ranked_artefact):
    served = Served.load(planted_ranked_artefact)
    picked = served.onboarding(8, 0.5)
    assert served.onboarding(8, 0.504) == picked  # the same list, from the cache
    assert served.onboarding(8, 0.496) == picked
    for n in range(40):  # every list is cached, and there are at most 101 of them
        served.onboarding(8, n / 400)
    assert set(served.__dict__["_onboarding"]) == {0.5, *(round(n / 400, 2) for n in range(40))}


def test_onboarding_starts_with_the_most_popular_item(client):
    popularity = {i: 0 for i in "ABCDEFGH"}
    for item in planted_dataset().interactions["item_id"]:
        popularity[item] += 1
    first = client.get("/v1/onboarding?n=1").json()["items"][0]["item_id"]
    assert popularity[first] == max(popularity.values())
    assert np.isfinite(client.get(f"/v1/items/{first}").json()["popularity"])


def test_a_wrong_method_lists_every_method_of_the_path(client):
    response = client.delete("/v1/items")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert client.put("/v1/users/u1").headers["allow"] == "GET"


def test_onboarding_diversity_zero_is_popularity_order(client):
    popularity = {i: 0 for i in "ABCDEFGH"}
    for item in planted_dataset().interactions["item_id"]:
        popularity[item] += 1
    listed = client.get("/v1/onboarding?n=8&diversity=0").json()["items"]
    counts = [popularity[i["item_id"]] for i in listed]
    assert counts == sorted(counts, reverse=True) and len(listed) == 8
    spread = client.get("/v1/onboarding?n=8&diversity=1").json()["items"]
    assert sorted(i["item_id"] for i in spread) == sorted(i["item_id"] for i in listed)
    for bad in ("-0.1", "1.5", "x"):
        response = client.get(f"/v1/onboarding?n=2&diversity={bad}")
        assert response.status_code == 422 and "diversity" in response.text


def test_the_ranker_scores_an_added_item_with_its_genres_and_year(planted_ranked_artefact):
    served = Served.load(planted_ranked_artefact)
    scorer = served.recommender.reranker.scorer
    assert scorer.positions(np.array(["N"])).tolist() == [1]  # an unknown ID
    served.add_items([ItemRecord("N", "Movie N (2024)", ("Comedy", "Space opera"), 1995)])
    (row,) = scorer.positions(np.array(["N"]))
    assert row >= 2
    want = [float(g == "Comedy") for g in scorer.genre_names]
    assert scorer._genres[row].tolist() == want and scorer._years[row] == 1995.0
    ranked = served.recommender.recommend(history=["A"], k=20)
    assert ranked.ranked and "N" in ranked.item_ids
