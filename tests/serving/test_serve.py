"""The serve bootstrap: registry, API key, store seeding, and the assembled app."""

from __future__ import annotations

import gc
import json
import shutil
import stat
import time
import weakref

import pytest
from fastapi.testclient import TestClient

from serving.registry import Registry
from serving.serve import (
    PointerWatcher,
    ServeOptions,
    api_key,
    build_service,
    seed_store,
    write_pointer,
)
from serving.service import EventRules, ModelSlot, Served
from tests.conftest import planted_dataset
from towers.pipeline import DataSource


def _fake_artefact(directory, version: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"version": version}))


def test_registry_publishes_promotes_and_remembers(tmp_path):
    registry = Registry(tmp_path / "models")
    assert registry.current() is None
    for version in ("20260101T000000Z-aa", "20260102T000000Z-bb"):
        staging = registry.staging()
        _fake_artefact(staging, version)
        path = registry.publish(staging)
        assert path == registry.root / version and not staging.exists()
        registry.promote(version)
    assert registry.current().name == "20260102T000000Z-bb"
    assert registry.versions() == ["20260101T000000Z-aa", "20260102T000000Z-bb"]
    assert registry.history() == ["20260101T000000Z-aa", "20260102T000000Z-bb"]
    with pytest.raises(KeyError, match="nope"):
        registry.promote("nope")
    staging = registry.staging()
    _fake_artefact(staging, "20260101T000000Z-aa")
    with pytest.raises(FileExistsError, match="already published"):
        registry.publish(staging)
    with pytest.raises(FileNotFoundError, match="no artefact"):
        registry.publish(registry.staging())


def test_api_key_from_env_or_a_private_file(tmp_path, monkeypatch):
    monkeypatch.delenv("NEXTWATCH_API_KEY", raising=False)
    key, source = api_key(tmp_path)
    assert len(key) >= 32 and source == str(tmp_path / "api_key")
    assert stat.S_IMODE((tmp_path / "api_key").stat().st_mode) == 0o600
    assert api_key(tmp_path)[0] == key  # reused, not regenerated
    monkeypatch.setenv("NEXTWATCH_API_KEY", "from-env")
    assert api_key(tmp_path) == ("from-env", "$NEXTWATCH_API_KEY")


def test_build_service_seeds_an_empty_store_and_serves(tmp_path, planted_artefact, monkeypatch):
    monkeypatch.setenv("NEXTWATCH_API_KEY", "k")
    log = tmp_path / "log.csv"
    planted_dataset().interactions.rename(columns={"user_id": "user", "item_id": "item"}).to_csv(
        log, index=False
    )
    source = DataSource(dataset=None, interactions=str(log))
    options = ServeOptions(home=tmp_path / "home", artefact=planted_artefact)
    app, store, info = build_service(options, source)
    try:
        assert (
            info["events"] == 240
            and info["users"] == 80
            and info["api_key"] == "$NEXTWATCH_API_KEY"
        )
        assert info["store"].endswith("events.db)")
        with TestClient(app) as client:
            body = client.get("/v1/users/u0/recommendations", params={"k": 2}).json()
            assert body["events"] == 3 and len(body["items"]) == 2
    finally:
        store.close()
    # A second start finds the store non-empty and does not seed again.
    app, store, info = build_service(options, source)
    store.close()
    assert info["events"] == 240


def test_the_share_for_items_added_from_metadata_holds_across_a_swap(
    tmp_path, planted_artefact, monkeypatch
):
    monkeypatch.setenv("NEXTWATCH_API_KEY", "k")
    source = DataSource(dataset=None, interactions=None)
    options = ServeOptions(
        home=tmp_path / "home", artefact=planted_artefact, seed=False, placed_share=0.3
    )
    app, store, _ = build_service(options, source)
    try:
        slot = app.state.service.slot
        assert slot.current.recommender.placed_share == 0.3
        _, new = slot.reload()
        assert new.recommender.placed_share == 0.3
    finally:
        store.close()
    with pytest.raises(ValueError, match="placed share must be a number in \\[0, 1\\]"):
        ServeOptions(home=tmp_path, placed_share=1.5)


def test_a_worker_that_loaded_before_a_swap_follows_it(tmp_path, planted_artefact):
    write_pointer(tmp_path, planted_artefact)
    slot = ModelSlot(Served.load(planted_artefact))
    other = tmp_path / "other"
    shutil.copytree(planted_artefact, other)
    write_pointer(tmp_path, other)  # the swap lands before the watcher exists
    watcher = PointerWatcher(tmp_path, slot)
    assert watcher.check() and slot.current.artefact == other.resolve()
    assert not watcher.check()  # nothing new


def test_a_worker_retries_a_swap_whose_load_failed(tmp_path, planted_artefact, monkeypatch):
    slot = ModelSlot(Served.load(planted_artefact))
    other = tmp_path / "other"
    shutil.copytree(planted_artefact, other)
    write_pointer(tmp_path, other)
    watcher = PointerWatcher(tmp_path, slot, retry_s=0.0)
    real, calls = slot._loader, []

    def fails_once(path):
        calls.append(path)
        if len(calls) == 1:
            raise OSError("transient: file busy")
        return real(path)

    monkeypatch.setattr(slot, "_loader", fails_once)
    assert not watcher.check() and slot.current.artefact == planted_artefact.resolve()
    assert watcher.check() and slot.current.artefact == other.resolve()  # retried
    assert not watcher.check() and len(calls) == 2


def test_the_seed_goes_in_as_one_transaction(tmp_path):
    class Recording:
        def import_users(self, frame, keep_existing=False):
            return len(frame)

        def import_events(self, frame, batch_size=50_000):
            self.batch_size, self.rows = batch_size, len(frame)
            return len(frame)

    store = Recording()
    log = tmp_path / "log.csv"
    planted_dataset().interactions.to_csv(log, index=False)
    source = DataSource(dataset=None, interactions=str(log), user_col="user_id",
                        item_col="item_id")  # fmt: skip
    assert seed_store(store, source) == 240
    assert store.batch_size >= store.rows  # an interrupted seed leaves nothing half-imported

    # Ratings on a scale the live service would refuse are refused before anything is written.
    ten = tmp_path / "ten.csv"
    ten.write_text("user,item,rating,timestamp\nu,A,4,1\nu,B,10,2\n")
    store.rows = None
    ten_source = DataSource(dataset=None, interactions=str(ten))
    with pytest.raises(ValueError, match=r"run from 4 to 10, outside .*\[0.5, 5\].*--rating-max"):
        seed_store(store, ten_source)
    assert store.rows is None
    assert seed_store(store, ten_source, EventRules(1, 10)) == 2


def test_the_old_model_is_freed_after_a_swap(planted_artefact):
    slot = ModelSlot(Served.load(planted_artefact), collect_after_s=0.0)
    old = weakref.ref(slot.current)
    slot.reload(planted_artefact)
    time.sleep(0.5)  # the collection runs on a timer
    gc.collect()
    assert old() is None, "the swapped-out model is still alive (frozen or referenced)"


@pytest.mark.parametrize("dataset", ["ml-latest-small", "ml-100k", None])
def test_the_first_model_trains_its_ranker_with_the_validated_settings(
    tmp_path, monkeypatch, dataset
):
    import ranking.pipeline
    import towers.pipeline
    from ranking.train import (
        VALIDATED_LABEL_HORIZONS,
        VALIDATED_MEMBERS,
        VALIDATED_TOWER_SCORE_WEIGHTS,
    )
    from serving.serve import train_first_model
    from towers.presets import new_user_config

    seen = {}

    def fake_candidates(source, output, config, options, new_user=None):
        seen["new_user"] = new_user
        _fake_artefact(output, "v1")

    def fake_ranker(source, artefact, output=None, config=None, options=None):
        seen["config"], seen["options"] = config, options

    monkeypatch.setattr(towers.pipeline, "train_candidates", fake_candidates)
    monkeypatch.setattr(ranking.pipeline, "train_ranker_for_artefact", fake_ranker)
    registry = Registry(tmp_path / "models")
    source = DataSource(dataset=dataset, interactions=None if dataset else "log.csv")
    train_first_model(registry, source)
    assert seen["options"].label_horizon == VALIDATED_LABEL_HORIZONS.get(dataset, 1)
    assert seen["config"].tower_score_weight == VALIDATED_TOWER_SCORE_WEIGHTS.get(dataset, 0.0)
    assert seen["config"].members == VALIDATED_MEMBERS.get(dataset, 1)
    assert seen["config"].members == (2 if dataset else 1)
    assert seen["new_user"] == new_user_config(dataset)  # the new-user tower beside it
    assert registry.current() is not None
