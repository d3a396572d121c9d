"""The live service's Python API and HTTP edges: arguments refused by name, the event rules,
items added by another worker, content types, and a seed that keeps registered users."""

from __future__ import annotations

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from serving.http import HttpSettings, create_app
from serving.serve import seed_store
from serving.service import EventRejected, EventRules, LiveService, ModelSlot, Served
from serving.store import UserRecord, open_store
from towers.pipeline import DataSource

KEY = {"X-API-Key": "secret"}


@pytest.fixture()
def service(planted_store, planted_ranked_artefact):
    return LiveService(planted_store, ModelSlot(Served.load(planted_ranked_artefact)))


def test_recommend_refuses_one_string_for_a_list_and_a_user_with_a_history(service):
    for name in ("history", "exclude", "genres"):
        with pytest.raises(ValueError, match=f"{name} must be a sequence of strings"):
            service.recommend(**{name: "AB"})
    with pytest.raises(ValueError, match="give user_id .* or history .*, not both"):
        service.recommend("u0", history=["A"])
    assert service.recommend(exclude=["A", "B"], k=3)["items"]


def test_python_events_get_the_http_checks_by_name(service):
    bad = [
        ({"user_id": "alice ", "item_id": "A", "rating": 3}, r"events\[0\].user_id: .*whitespace"),
        ({"user_id": 7, "item_id": "A", "rating": 3}, r"events\[0\].user_id: .*valid string"),
        ({"user_id": "x", "item_id": "A", "rating": "x"}, r"events\[0\].rating: .*valid number"),
        ({"user_id": "x", "item_id": "A", "rating": 3, "when": 1}, r"events\[0\].when: "),
    ]  # fmt: skip
    for event, message in bad:
        with pytest.raises(EventRejected, match=message):
            service.validate([event])
    with pytest.raises(EventRejected, match="events must be a list"):
        service.validate({"user_id": "x", "item_id": "A", "rating": 3})
    (event,) = service.validate(
        [{"user_id": "x", "item_id": "A", "rating": 3, "timestamp": "2020-01-02T00:00:00Z"}]
    )
    assert event.timestamp == 1577923200.0


def test_event_rules_are_checked():
    with pytest.raises(ValueError, match=r"rating_min \(5.0\) must be <= rating_max \(1.0\)"):
        EventRules(rating_min=5, rating_max=1)
    with pytest.raises(ValueError, match="rating_max must be a finite number"):
        EventRules(rating_max=float("nan"))
    with pytest.raises(ValueError, match="EventRules.rating_min must be float"):
        EventRules(rating_min="1")


def test_an_item_added_through_another_worker_is_accepted_at_once(
    planted_store, planted_ranked_artefact
):
    one = LiveService(planted_store, ModelSlot(Served.load(planted_ranked_artefact)))
    two = LiveService(
        planted_store, ModelSlot(Served.load(planted_ranked_artefact)), item_sync_interval_s=600
    )
    two.validate([{"user_id": "x", "item_id": "A", "rating": 3}])  # synced: not again for 10 min
    with TestClient(create_app(one, HttpSettings(api_key="secret"))) as client:
        body = {"item_id": "N", "title": "Movie N (2024)", "genres": ["Comedy"]}
        assert client.post("/v1/items", json=body, headers=KEY).status_code == 201
    (event,) = two.validate([{"user_id": "x", "item_id": "N", "rating": 3}])
    assert event.item_id == "N"


def test_a_body_that_is_not_json_and_a_bad_single_event(service):
    with TestClient(create_app(service, HttpSettings(api_key="secret"))) as client:
        body = '{"user_id": "x", "item_id": "A", "rating": 3}'
        for headers in ({}, {"Content-Type": "text/plain"}):
            r = client.post("/v1/events", content=body, headers={**KEY, **headers})
            assert r.status_code == 415 and "Content-Type: application/json" in r.text
        r = client.post("/v1/events", json={"user_id": "x", "item_id": "A", "rating": 9},
                        headers=KEY)  # fmt: skip
        assert r.status_code == 422 and r.json()["detail"].startswith("rating 9.0 is outside")
        r = client.post("/v1/events", json={"events": [{"user_id": "x", "item_id": "ZZ",
                        "rating": 3}]}, headers=KEY)  # fmt: skip
        assert r.json()["detail"].startswith("events[0].item_id 'ZZ'")


def test_a_seed_keeps_the_users_registered_before_it(tmp_path):
    log, users = tmp_path / "log.csv", tmp_path / "users.csv"
    log.write_text("user,item,rating,timestamp\n1,A,4,10\n2,B,3,20\n")
    users.write_text("user_id,age,gender\n1,24,M\n2,30,F\n")
    with open_store(f"sqlite:///{tmp_path / 'events.db'}") as store:
        store.upsert_user(UserRecord("1", age=61.0, gender="F"))  # registered, no events yet
        seed_store(store, DataSource(dataset=None, interactions=str(log), users=str(users)))
        assert (store.get_user("1").age, store.get_user("1").gender) == (61.0, "F")
        assert store.get_user("2").age == 30.0 and store.event_count() == 2


@pytest.mark.parametrize("new_id", ["team/a", ".", "..", "a,b"])
def test_only_ids_the_service_creates_must_fit_a_url(new_id):
    from pydantic import ValidationError

    from serving.schemas import EventIn, ItemIn, RecommendationRequest, UserIn

    # A trained catalogue may have any of these in item IDs: events, histories and excludes
    # refer to it.
    assert EventIn(user_id="u", item_id=new_id, rating=3).item_id == new_id
    assert RecommendationRequest(history=[new_id], exclude=[new_id]).history == [new_id]
    # A created ID must survive a path ("." and ".." are removed by clients, "/" splits it)
    # and a query list ("," separates ?exclude=a,b).
    for make in (lambda: EventIn(user_id=new_id, item_id="A", rating=3),
                 lambda: UserIn(user_id=new_id),
                 lambda: ItemIn(item_id=new_id, title="New")):  # fmt: skip
        with pytest.raises(ValidationError, match="no '/' or ','"):
            make()
    assert EventIn(user_id="a.b", item_id="A", rating=3).user_id == "a.b"  # dots inside: fine


def test_the_write_key_rates_and_only_the_admin_key_adds_items_or_reloads(service):
    settings = HttpSettings(api_key="writer", admin_key="admin")
    item = {"item_id": "N", "title": "Movie N (2024)", "genres": ["Comedy"]}
    event = {"user_id": "x", "item_id": "A", "rating": 3}
    with TestClient(create_app(service, settings)) as client:
        for path, body in (("/v1/items", item), ("/v1/admin/reload", {})):
            r = client.post(path, json=body, headers={"X-API-Key": "writer"})
            assert r.status_code == 403 and "needs the admin key" in r.json()["detail"], r.text
        assert (
            client.post("/v1/events", json=event, headers={"X-API-Key": "writer"}).status_code
            == 201
        )
        assert (
            client.post("/v1/items", json=item, headers={"X-API-Key": "admin"}).status_code == 201
        )
        event["item_id"] = "N"
        assert (
            client.post("/v1/events", json=event, headers={"X-API-Key": "admin"}).status_code == 201
        )
        assert client.post("/v1/events", json=event, headers={"X-API-Key": "x"}).status_code == 403


def test_title_search_ignores_case_and_accents():
    from serving.items import ItemCatalogue

    catalogue = ItemCatalogue(
        pd.DataFrame(
            {
                "item_id": ["1", "2"],
                "title": ["Amélie (2001)", "Evil Dead (1981)"],
                "genres": [[], []],
            }
        )  # fmt: skip
    )
    assert [r["item_id"] for r in catalogue.search("amelie")] == ["1"]
    assert [r["item_id"] for r in catalogue.search("ÉVIL")] == ["2"]
