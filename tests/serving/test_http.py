"""The HTTP API on the planted artefact (A -> B, C -> D) over a real SQLite store."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.explain import leave_one_out_drops
from serving.http import HttpSettings, create_app
from serving.http_errors import _unparsable_body
from serving.schemas import MAX_K
from serving.service import LiveService, ModelSlot, Served, user_state
from serving.store import Event, UserRecord

KEY = {"X-API-Key": "secret"}


@pytest.fixture()
def store(planted_store):
    return planted_store


@pytest.fixture()
def service(store, planted_ranked_artefact):
    return LiveService(store, ModelSlot(Served.load(planted_ranked_artefact)))


@pytest.fixture()
def client(service):
    app = create_app(service, HttpSettings(api_key="secret", max_body_bytes=4096))
    with TestClient(app) as c:
        yield c


def _ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [i["item_id"] for i in response.json()["items"]]


def test_leave_one_out_drops_by_hand():
    # full query [1, 1]; without item 0: [0, 1]; without item 1: [1, 0]
    queries = np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    items = np.array([[2.0, 0.0], [0.0, 3.0]])
    drops = leave_one_out_drops(queries, items)
    np.testing.assert_allclose(drops, [[2.0, 0.0], [0.0, 3.0]])


def test_user_state_folds_repeats_and_watches():
    events = [
        Event("u", "a", "rating", 2.0, 1.0),
        Event("u", "b", "watch", None, 2.0),
        Event("u", "a", "rating", 4.0, 3.0),
    ]
    state = user_state(events, UserRecord("u", gender="F"))
    assert state.history == ["b", "a"]  # a moved to its latest event
    assert state.stats == {"rating_count": 2.0, "rating_mean": 4.0, "last_timestamp": 3.0}
    assert state.features == {"gender": "F"} and state.events == 3


def test_a_later_watch_keeps_the_items_rating():
    events = [Event("u", "a", "rating", 5.0, 1.0), Event("u", "a", "watch", None, 2.0)]
    state = user_state(events, None)
    assert state.history == ["a"]
    assert state.stats == {"rating_count": 1.0, "rating_mean": 5.0, "last_timestamp": 2.0}


def test_a_rating_changes_the_next_recommendation_at_once(client):
    before = _ids(client.get("/v1/users/newbie/recommendations", params={"k": 3}))
    r = client.post(
        "/v1/events", json={"user_id": "newbie", "item_id": "A", "rating": 5}, headers=KEY
    )
    assert r.status_code == 201 and r.json()["accepted"] == 1
    after = client.get("/v1/users/newbie/recommendations", params={"k": 3})
    body = after.json()
    assert body["events"] == 1 and body["history_length"] == 1
    assert body["items"][0]["item_id"] == "B"  # planted: A is followed by B
    assert body["items"][0]["because"] == {"item_id": "A", "title": "Movie A (1990)"}
    assert "A" not in _ids(after) and _ids(after) != before


def test_known_user_history_comes_from_the_store(client):
    body = client.get("/v1/users/u0/recommendations", params={"k": 2, "rank": "false"}).json()
    assert body["events"] == 3 and body["history_length"] == 3
    assert not {"A", "B"} & {i["item_id"] for i in body["items"]}  # seen items left out


def test_anonymous_recommendations_and_filters(client):
    r = client.post("/v1/recommendations", json={"history": ["C"], "k": 1})
    assert _ids(r) == ["D"]
    r = client.post("/v1/recommendations", json={"history": ["C"], "k": 2, "genres": ["Horror"]})
    assert set(_ids(r)) <= set("EFGH")
    r = client.get("/v1/users/u0/recommendations", params={"k": 8, "exclude": "E,F"})
    assert not {"E", "F"} & set(_ids(r))
    r = client.post("/v1/recommendations", json={"history": ["C", "nope"], "k": 1})
    assert r.json()["ignored_history"] == ["nope"]


def test_an_anonymous_history_counts_a_repeat_once_as_a_stored_one_does(client):
    for n, item in enumerate(["C", "A", "A", "A"]):
        event = {"user_id": "rep", "item_id": item, "rating": 4, "timestamp": 1000 + n}
        assert client.post("/v1/events", json=event, headers=KEY).status_code == 201
    # The generator's order and scores (the ranker also reads the stored rating stats).
    stored = client.get("/v1/users/rep/recommendations", params={"k": 8, "rank": False}).json()
    body = {"history": ["C", "A", "A", "A"], "k": 8, "rank": False}
    anonymous = client.post("/v1/recommendations", json=body)
    assert anonymous.json()["history_length"] == stored["history_length"] == 2
    assert _ids(anonymous) == [i["item_id"] for i in stored["items"]]
    assert [i["score"] for i in anonymous.json()["items"]] == pytest.approx(
        [i["score"] for i in stored["items"]]
    )


def test_events_are_idempotent_by_key(client, store):
    body = {"events": [{"user_id": "x", "item_id": "C", "rating": 4, "timestamp": 100}]}
    headers = {**KEY, "Idempotency-Key": "k1"}
    first = client.post("/v1/events", json=body, headers=headers)
    again = client.post("/v1/events", json=body, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == {**first.json(), "replayed": True}
    assert len(store.history("x")) == 1
    body["events"][0]["rating"] = 1
    conflict = client.post("/v1/events", json=body, headers=headers)
    assert conflict.status_code == 409 and "k1" in conflict.json()["detail"]


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"user_id": "x", "item_id": "A", "rating": 9}, "rating"),
        ({"user_id": "x", "item_id": "A"}, "rating"),
        ({"user_id": "x", "item_id": "A", "type": "watch", "rating": 3}, "rating"),
        ({"user_id": "x", "item_id": "ZZ", "rating": 3}, "item_id"),
        ({"user_id": "x", "item_id": "A", "rating": 3, "timestamp": 4e10}, "timestamp"),
        ({"user_id": "x", "item_id": "A", "rating": 3, "timestamp": -1}, "timestamp"),
        ({"user_id": "", "item_id": "A", "rating": 3}, "user_id"),
        ({"user_id": "x\u0000y", "item_id": "A", "rating": 3}, "user_id"),
        ({"user_id": "x ", "item_id": "A", "rating": 3}, "user_id"),
        ({"user_id": "   ", "item_id": "A", "rating": 3}, "user_id"),
        ({"user_id": "x\u2028y", "item_id": "A", "rating": 3}, "user_id"),
        ({"user_id": "\u200b", "item_id": "A", "rating": 3}, "user_id"),
        ({"user_id": "team/alice", "item_id": "A", "rating": 3}, "user_id"),
        ({"user_id": "x", "item_id": "A", "rating": 3, "colour": "red"}, "colour"),
    ],
)
def test_bad_events_get_422_naming_the_field(client, store, event, field):
    r = client.post("/v1/events", json=event, headers=KEY)
    assert r.status_code == 422, r.text
    assert field in str(r.json()["detail"])
    assert store.history("x") == []


def test_a_bad_body_is_reported_against_the_shape_it_has(client):
    single = client.post("/v1/events", json={"user_id": "x", "item_id": "A", "rating": "5"},
                         headers=KEY)  # fmt: skip
    assert single.status_code == 422
    assert single.json()["detail"] == "rating: Input should be a valid number"
    batch = {"events": [{"user_id": "x", "item_id": "A", "rating": 3},
                        {"user_id": "x", "item_id": "A", "rating": "5"}]}  # fmt: skip
    r = client.post("/v1/events", json=batch, headers=KEY)
    assert r.json()["detail"] == "events[1].rating: Input should be a valid number"
    assert r.json()["errors"][0]["loc"] == ["body", "events", 1, "rating"]
    json_type = {**KEY, "Content-Type": "application/json"}
    broken = client.post("/v1/events", content=b'{"user_id": "x",', headers=json_type)
    assert broken.status_code == 422
    assert broken.json()["detail"].startswith("body: invalid JSON at character 16")
    binary = client.post("/v1/events", content=b'{"user_id": "\xff"}', headers=json_type)
    assert binary.status_code in (400, 422) and binary.json()["detail"].startswith("body")
    # Valid JSON that Python will not decode is named for what it is.
    deep = b"[" * 1500 + b"]" * 1500  # deeper than the recursion limit, within the body limit
    r = client.post("/v1/events", content=deep, headers=json_type)
    assert (r.status_code, r.json()["detail"]) == (400, "body: JSON nested too deeply")
    with pytest.raises(ValueError) as too_long:  # over this client's body limit: asked directly
        json.loads("1" * 5000)
    assert _unparsable_body(too_long.value) == "body: a JSON number has too many digits"


def test_path_ids_follow_the_same_rule(client):
    r = client.get("/v1/users/x%20/recommendations")
    assert r.status_code == 422 and r.json()["detail"].startswith("user_id: Value error")
    assert client.get("/v1/items/%E2%80%8B").status_code == 422
    # Bytes that are not UTF-8 would all decode to U+FFFD, one user for %ff, %fe, ...
    r = client.get("/v1/users/%ff/recommendations")
    assert (
        r.status_code == 400 and r.json()["detail"] == "path: not valid UTF-8 once percent-decoded"
    )
    assert client.get("/v1/users/%E2%82%AC/recommendations").status_code == 200  # "€" is UTF-8


def test_a_bad_event_in_a_batch_stores_nothing(client, store):
    events = [
        {"user_id": "x", "item_id": "A", "rating": 3},
        {"user_id": "x", "item_id": "A", "rating": 30},
    ]
    r = client.post("/v1/events", json={"events": events}, headers=KEY)
    assert r.status_code == 422 and "events[1].rating" in r.json()["detail"]
    assert store.history("x") == []


def test_writes_and_admin_need_the_key(client):
    event = {"user_id": "x", "item_id": "A", "rating": 3}
    assert client.post("/v1/events", json=event).status_code == 401
    assert client.post("/v1/events", json=event, headers={"X-API-Key": "no"}).status_code == 403
    assert client.post("/v1/users", json={}).status_code == 401
    assert client.post("/v1/admin/reload").status_code == 401


def test_limits_on_k_and_body_size(client):
    assert client.get("/v1/users/u0/recommendations", params={"k": 0}).status_code == 422
    r = client.get("/v1/users/u0/recommendations", params={"k": MAX_K + 1})
    assert r.status_code == 422 and "k" in str(r.json()["detail"])
    r = client.get("/v1/users/u0/recommendations", params={"genres": "Western"})
    assert r.status_code == 422 and "genres" in r.json()["detail"]
    big = {"history": ["AAAAAAAA"] * 600}  # about 6.6 kB, over the 4 kB limit
    assert client.post("/v1/recommendations", json=big).status_code == 413


def test_users_register_update_and_read(client):
    r = client.post("/v1/users", json={"user_id": "n", "age": 30, "gender": "F"}, headers=KEY)
    assert r.status_code == 201 and r.json()["gender"] == "F"
    created = r.json()["created_at"]
    r = client.post("/v1/users", json={"user_id": "n", "age": 31}, headers=KEY)
    assert r.status_code == 200 and r.json()["age"] == 31 and r.json()["created_at"] == created
    assert client.get("/v1/users/n").json()["gender"] == "F"  # not sent: kept
    r = client.post("/v1/users", json={"user_id": "n", "gender": None}, headers=KEY)
    assert r.json()["gender"] is None and r.json()["age"] == 31  # an explicit null clears
    assert client.get("/v1/users/n").json()["events"] == 0
    assert client.get("/v1/users/u0").json()["recent"] == ["E", "B", "A"]
    assert client.get("/v1/users/ghost").status_code == 404
    anonymous = client.post("/v1/users", json={}, headers=KEY).json()
    assert len(anonymous["user_id"]) == 32


def test_items_lookup_search_and_similar(client):
    assert client.get("/v1/items/A").json()["title"] == "Movie A (1990)"
    assert client.get("/v1/items/nope").status_code == 404
    found = client.get("/v1/items", params={"q": "movie c"}).json()
    assert [i["item_id"] for i in found] == ["C"]
    assert client.get("/v1/items", params={"q": "!!"}).status_code == 422
    similar = client.get("/v1/items/A/similar", params={"k": 3}).json()
    assert len(similar["items"]) == 3 and "A" not in [i["item_id"] for i in similar["items"]]
    assert client.get("/v1/items/nope/similar").status_code == 404


def test_large_answers_are_gzipped_for_clients_that_accept_it(client):
    page = client.get("/", headers={"Accept-Encoding": "gzip"})
    assert page.headers["content-encoding"] == "gzip" and "<html" in page.text  # httpx decodes
    assert int(page.headers["content-length"]) < len(page.content) // 2
    plain = client.get("/", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.text == page.text
    small = client.post(
        "/v1/recommendations", json={"history": ["A"]}, headers={"Accept-Encoding": "gzip"}
    )
    assert small.status_code == 200 and "content-encoding" not in small.headers


def test_model_health_metrics_and_reload(client, planted_artefact):
    model = client.get("/v1/model").json()
    assert model["ranker"] and model["swaps"] == 0
    assert client.get("/health/live").json()["status"] == "ok"
    assert client.get("/health/ready").json()["checks"]["store"] == "ok"
    r = client.post("/v1/admin/reload", json={"artefact": str(planted_artefact)}, headers=KEY)
    assert r.status_code == 200, r.text
    model = client.get("/v1/model").json()
    assert not model["ranker"] and model["swaps"] == 1
    r = client.post("/v1/admin/reload", json={"artefact": "/no/such/dir"}, headers=KEY)
    assert r.status_code == 422 and "artefact" in r.json()["detail"]
    r = client.post("/v1/admin/reload", json={"artefact": ""}, headers=KEY)
    assert r.status_code == 422 and r.json()["detail"].startswith("artefact")
    assert client.get("/v1/model").json()["artefact"] == model["artefact"]
    text = client.get("/metrics").text
    assert "nextwatch_model_swaps_total 1.0" in text
    assert 'nextwatch_http_requests_total{method="GET",route="/v1/model",status="200"}' in text


def test_no_request_fails_during_hot_swaps(service, planted_artefact, planted_ranked_artefact):
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                out = service.recommend("u0", k=2)
                assert len(out["items"]) == 2
            except BaseException as exc:  # noqa: BLE001  (collect every failure)
                errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for n in range(6):
        service.slot.reload(planted_artefact if n % 2 == 0 else planted_ranked_artefact)
    stop.set()
    for t in threads:
        t.join()
    assert errors == [] and service.slot.swaps == 6


def test_a_model_loads_with_a_short_switch_interval_restored_afterwards(service):
    import sys

    from serving.served import short_switch_interval

    before = sys.getswitchinterval()
    seen = []

    def loader(path):
        seen.append(sys.getswitchinterval())
        return Served.load(path)

    slot = ModelSlot(service.slot.current, loader, switch_interval_s=0.0005)
    slot.reload()
    assert seen == [pytest.approx(0.0005)] and sys.getswitchinterval() == before
    with pytest.raises(RuntimeError), short_switch_interval(0.001):
        raise RuntimeError("a failed load")
    assert sys.getswitchinterval() == before


def test_a_chunked_body_over_the_limit_is_a_413(client):
    def chunks():
        yield b'{"history": ['
        for _ in range(1000):
            yield b'"AAAAAAAA",'
        yield b'"A"]}'

    r = client.post(
        "/v1/recommendations", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
