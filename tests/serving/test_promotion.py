"""The registry's checksums and rollback, guarded promotion, and a retrain that dies."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from serving import registry as registry_module
from serving.api import Recommender
from serving.promotion import guarded_promote, recent_holdout
from serving.registry import CorruptVersion, Registry
from tests.conftest import planted_dataset
from towers.index import ItemIndex


def _version_of(artefact, registry: Registry, name: str, shuffle: bool = False):
    """Publish a copy of ``artefact`` as version ``name`` (its rows shuffled if asked)."""
    staging = registry.staging()
    shutil.copytree(artefact, staging, dirs_exist_ok=True)
    config = json.loads((staging / "config.json").read_text())
    config["version"] = name
    (staging / "config.json").write_text(json.dumps(config))
    ranker = staging / "ranker" / "config.json"
    if ranker.exists():  # the ranker names the tower version it was trained for
        ranker.write_text(json.dumps({**json.loads(ranker.read_text()), "tower_version": name}))
    if shuffle:  # a broken model: every item gets another item's vector and bias
        index = ItemIndex.load(staging / "index")
        ids = index.item_ids
        rows = np.stack([index.vector(i) for i in ids])
        shutil.rmtree(staging / "index")
        perm = np.random.default_rng(0).permutation(len(ids))
        ItemIndex.build(ids, rows[perm]).save(staging / "index")
    return registry.publish(staging)


def _outputs(path) -> list[list[tuple[str, float]]]:
    rec = Recommender.load(path)
    histories = [["A"], ["C", "D"], [], ["E", "A"]]
    return [[(r.item_id, r.score) for r in rec.recommend(history=h, k=5)] for h in histories]


@pytest.fixture()
def registry(tmp_path):
    return Registry(tmp_path / "models")


def test_a_published_version_is_checked_before_it_is_promoted(registry, planted_artefact):
    path = _version_of(planted_artefact, registry, "20260101T000000Z-good")
    assert (path / "CHECKSUMS.json").exists()
    registry.verify(path.name)
    with open(path / "item_vectors.npy", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(CorruptVersion, match="item_vectors.npy"):
        registry.promote(path.name)
    assert registry.current() is None


def test_a_broken_candidate_is_refused_and_a_sound_one_promoted(registry, planted_artefact, caplog):
    holdout = recent_holdout(planted_dataset().interactions, 0.3)
    assert len(holdout) > 0
    first = _version_of(planted_artefact, registry, "20260101T000000Z-first")
    assert guarded_promote(registry, first.name, holdout, k=2).promoted  # nothing served yet
    broken = _version_of(planted_artefact, registry, "20260102T000000Z-broken", shuffle=True)
    decision = guarded_promote(registry, broken.name, holdout, tolerance=0.02, k=2)
    assert not decision.promoted and decision.regressed
    assert registry.current() == first
    assert "promotion of 20260102T000000Z-broken refused" in caplog.text
    sound = _version_of(planted_artefact, registry, "20260103T000000Z-sound")
    decision = guarded_promote(registry, sound.name, holdout, k=2)
    assert decision.promoted and decision.candidate == decision.serving
    assert registry.current() == sound


def test_a_holdout_of_rewatches_measures_nothing_and_decides_nothing(registry, planted_artefact):
    log = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u2", "u2"],
                        "item_id": ["A", "B", "C", "D", "C"],
                        "timestamp": [1, 2, 3, 4, 5]})  # fmt: skip
    holdout = recent_holdout(log, 0.2)  # u2's C again at t5: already in u2's history
    assert len(holdout) == 0
    first = _version_of(planted_artefact, registry, "20260101T000000Z-first")
    with pytest.raises(ValueError, match="no users with a new item"):
        guarded_promote(registry, first.name, holdout)
    registry.promote(first.name)
    for bad in (float("nan"), 1.5, -0.1, float("inf")):
        with pytest.raises(ValueError, match="tolerance must be"):
            guarded_promote(registry, first.name, recent_holdout(log, 0.5), tolerance=bad)
    # Items no version ranks anywhere: both score 0, so the candidate is refused, not waved on.
    nowhere = recent_holdout(log.assign(item_id=["A", "B", "C", "X", "Y"]), 0.5)
    broken = _version_of(planted_artefact, registry, "20260102T000000Z-broken", shuffle=True)
    decision = guarded_promote(registry, broken.name, nowhere, k=2)
    assert not decision.promoted and "cannot tell the versions apart" in decision.reason
    assert registry.current() == first


def test_rollback_restores_the_previous_outputs_exactly(registry, planted_artefact):
    holdout = recent_holdout(planted_dataset().interactions, 0.3)
    first = _version_of(planted_artefact, registry, "20260101T000000Z-first")
    registry.promote(first.name)
    before = _outputs(registry.current())
    broken = _version_of(planted_artefact, registry, "20260102T000000Z-broken", shuffle=True)
    registry.promote(broken.name)  # promoted without the guard, by hand
    assert _outputs(registry.current()) != before
    assert registry.rollback() == first
    assert _outputs(registry.current()) == before
    with pytest.raises(LookupError, match="no earlier"):
        registry.rollback()
    assert guarded_promote(registry, first.name, holdout, k=2).promoted  # still servable


def _bare_version(registry: Registry, name: str):
    """Publish a stand-in version (a config and one file): enough for the registry's pointers."""
    staging = registry.staging()
    (staging / "config.json").write_text(json.dumps({"version": name}))
    (staging / "weights.bin").write_bytes(name.encode())
    return registry.publish(staging)


def test_a_promotion_that_dies_between_its_writes_rolls_back_to_what_served(registry):
    for name in ("v1", "v2"):
        registry.promote(_bare_version(registry, name).name)
    _bare_version(registry, "v3")
    real = registry_module.write_atomic

    def dies_on_the_history(path, text):
        if path.name == registry_module.HISTORY:
            raise OSError("disk full")
        real(path, text)

    registry_module.write_atomic = dies_on_the_history
    try:
        with pytest.raises(OSError, match="disk full"):
            registry.promote("v3")
    finally:
        registry_module.write_atomic = real
    assert registry.current().name == "v3" and registry.history() == ["v1", "v2"]
    assert registry.rollback().name == "v2"  # what served before v3, not v3 itself
    assert registry.rollback().name == "v1"


def test_rollback_ignores_history_written_after_the_serving_version(registry):
    for name in ("v1", "v2", "v3"):
        _bare_version(registry, name)
    registry.promote("v1")
    registry.promote("v2")
    (registry.root / registry_module.HISTORY).write_text("v1\nv2\nv3\n")  # v3 never served
    assert registry.rollback().name == "v1"


def test_rollback_to_a_deleted_version_switches_nothing(registry, tmp_path):
    for name in ("v1", "v2"):
        registry.promote(_bare_version(registry, name).name)
    shutil.rmtree(registry.root / "v1")
    with pytest.raises(CorruptVersion, match="v1 is no longer published"):
        registry.rollback()
    assert registry.current().name == "v2" and registry.history() == ["v1", "v2"]
    with pytest.raises(FileNotFoundError, match="not a model registry"):
        Registry(tmp_path / "typo", create=False)
    assert not (tmp_path / "typo").exists()


def test_cleanup_keeps_a_running_retrains_staging_directory(registry):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = registry.root / f".staging-{live.pid}-abc"
        running.mkdir()
        dead = registry.root / ".staging-999999999-abc"  # no such process
        dead.mkdir()
        mine = registry.staging()  # this process's own leftover
        assert sorted(registry.clean_staging()) == sorted([dead.name, mine.name])
        assert running.exists() and not dead.exists() and not mine.exists()
    finally:
        live.kill()
        live.wait()
    assert registry.clean_staging() == [running.name]


def _home_with_new_events(tmp_path, planted_artefact):
    """A service home serving the planted model, whose store has the planted log plus new
    events (10 users watch new item I, then 30 users each watch an item new to them), and the
    metadata files."""
    from serving.store import Event, ItemRecord, open_store

    home = tmp_path / "home"
    registry = Registry(home / "models")
    serving = _version_of(planted_artefact, registry, "20260101T000000Z-serving")
    registry.promote(serving.name)
    data = planted_dataset()
    seen = data.interactions.groupby("user_id")["item_id"].agg(set).to_dict()
    unseen = {u: next(i for i in "ABCDEFGH" if i not in items) for u, items in seen.items()}
    with open_store(f"sqlite:///{home / 'events.db'}") as store:
        store.import_users(data.users)
        store.import_events(data.interactions)
        store.upsert_item(ItemRecord("I", "Movie I (1990)", ("Comedy",), 1990))
        store.append(
            [Event(f"u{u}", "I", "rating", 5.0, 5_000 + u) for u in range(10)]
            + [Event(f"u{u}", unseen[f"u{u}"], "rating", 4.0, 6_000 + u) for u in range(30)]
        )
    files = tmp_path / "meta"
    files.mkdir()
    log = data.interactions.rename(columns={"user_id": "user", "item_id": "item"})
    log.to_csv(files / "log.csv", index=False)
    items = data.items.assign(genres=data.items["genres"].map("|".join), tags="")
    items.to_csv(files / "items.csv", index=False)
    data.users.to_csv(files / "users.csv", index=False)
    flags = ["--interactions", str(files / "log.csv"), "--items", str(files / "items.csv"),
             "--users", str(files / "users.csv")]  # fmt: skip
    return home, registry, serving, flags


def test_a_retrain_that_dies_leaves_the_serving_version_untouched(tmp_path, planted_artefact):
    home, registry, serving, flags = _home_with_new_events(tmp_path, planted_artefact)
    command = [sys.executable, "-m", "serving.cli", "retrain", "--home", str(home), *flags,
               "--no-ranker", "--batch-size", "8", "--verbose", "0"]  # fmt: skip
    child = subprocess.Popen([*command, "--epochs", "100000"], cwd=os.getcwd())
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".staging-") for p in registry.root.iterdir()):
        assert child.poll() is None and time.monotonic() < deadline, "retrain did not start"
        time.sleep(0.1)
    time.sleep(1.0)  # training now
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert registry.current() == serving and registry.versions() == [serving.name]
    registry.verify(serving.name)
    # The next run removes what the dead one left, and completes.
    done = subprocess.run(
        [*command, "--epochs", "2", "--tolerance", "1.0"], cwd=os.getcwd(),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    decision = json.loads(done.stdout[done.stdout.index("{") :])
    assert decision["promoted"] and "removed staging directories" in done.stderr
    assert not any(p.name.startswith(".staging-") for p in registry.root.iterdir())
    current = registry.current()
    assert current != serving and current.name == decision["version"]
    lineage = json.loads((current / "config.json").read_text())["lineage"]
    assert lineage["parent_version"] == serving.name and lineage["new_items"] == 1
    assert json.loads((home / "serving.json").read_text())["artefact"] == str(current)


def test_the_scheduler_retrains_in_a_process_after_n_events_or_a_period(tmp_path):
    from serving.retrain import RetrainScheduler
    from serving.serve import source_args
    from towers.pipeline import DataSource

    count, calls = [10], []
    scheduler = RetrainScheduler(
        tmp_path, lambda: count[0], every_events=3, extra_args=["--dataset", "ml-100k"],
        runner=lambda command: calls.append(command) or 0, check_s=0.01,
    )  # fmt: skip
    assert not scheduler.due()
    count[0] = 12
    assert not scheduler.due()
    count[0] = 13
    assert scheduler.due()
    scheduler.start()
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    scheduler.stop()
    assert calls[0][1:] == [
        "-m", "serving.cli", "retrain", "--home", str(tmp_path), "--dataset", "ml-100k"
    ]  # fmt: skip
    assert scheduler.runs == [0] and not scheduler.due()  # counted from the run's start
    timed = RetrainScheduler(tmp_path, lambda: 0, every_seconds=0.05, runner=lambda c: 0)
    assert not timed.due()
    time.sleep(0.06)
    assert timed.due()
    with pytest.raises(ValueError, match="every_events or every_seconds"):
        RetrainScheduler(tmp_path, lambda: 0)
    assert source_args(DataSource("ml-100k", "/data")) == [
        "--dataset", "ml-100k", "--data-dir", "/data", "--user-col", "user",
        "--item-col", "item", "--timestamp-col", "timestamp",
    ]  # fmt: skip


def test_the_scheduled_retrain_runs_in_the_background_priority_class(tmp_path):
    from serving.retrain import _run_in_background

    probe = tmp_path / "policy"
    code = (
        "import os; idle = getattr(os, 'SCHED_IDLE', None); "
        "policy = getattr(os, 'sched_getscheduler', lambda pid: None)(0); "
        "busy = idle is None or policy != idle; "
        f"open({str(probe)!r}, 'w').write(f'{{not busy}} {{os.nice(0)}}')"
    )
    assert _run_in_background([sys.executable, "-c", code]) == 0
    idle, niceness = probe.read_text().split()
    # SCHED_IDLE where the OS allows it; otherwise at least the lowest nice level.
    assert idle == "True" or int(niceness) == 19


def test_the_holdout_is_the_latest_events_in_log_order_even_when_they_tie():
    import pandas as pd

    log = pd.DataFrame(
        {"user_id": ["a", "a", "b", "b", "b", "c"], "item_id": ["1", "2", "1", "3", "4", "2"],
         "rating": 4.0, "timestamp": [1, 2, 3, 9, 9, 9]}
    )  # fmt: skip
    holdout = recent_holdout(log, 0.5)  # 3 events: b's 3 and 4, c's 2
    assert holdout.rows.tolist() == [False, False, False, True, True, True]
    assert holdout.histories == [["1"], []] and holdout.relevant == [{"3", "4"}, {"2"}]
    capped = recent_holdout(log, 0.5, max_events=2)  # ties broken by log order
    assert capped.rows.tolist() == [False, False, False, False, True, True]
    assert capped.histories == [["1", "3"], []] and capped.relevant == [{"4"}, {"2"}]
    with pytest.raises(ValueError, match="fraction"):
        recent_holdout(log, 1.0)


def test_serve_retrains_on_schedule_and_swaps_the_promoted_version_in(tmp_path, planted_artefact):
    import httpx

    from serving.store import open_store
    from tests.serving.conftest import _free_port

    home, registry, serving, flags = _home_with_new_events(tmp_path, planted_artefact)
    with open_store(f"sqlite:///{home / 'events.db'}") as store:
        count = store.event_count()
    port = _free_port()
    env = {**os.environ, "NEXTWATCH_API_KEY": "k"}
    server = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--home", str(home), "--no-seed",
         "--port", str(port), "--retrain-every-events", "5", *flags],
        env=env, cwd=os.getcwd(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "server did not start"
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert httpx.get(f"{url}/v1/model").json()["version"] == serving.name
        for u in range(6):
            event = {"user_id": f"u{u}", "item_id": "D", "rating": 4}
            assert httpx.post(f"{url}/v1/events", json=event, headers={"X-API-Key": "k"}).is_success
        while httpx.get(f"{url}/v1/model").json()["version"] == serving.name:
            assert time.monotonic() < deadline, "no new version was swapped in"
            time.sleep(0.5)
        assert registry.current() != serving
        assert httpx.get(f"{url}/v1/model").json()["version"] == registry.current().name
        with open_store(f"sqlite:///{home / 'events.db'}") as store:
            assert store.event_count() == count + 6
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_retrain_keeps_the_parent_rankers_configuration(tmp_path, planted_ranked_artefact):
    from ranking.artefact import ranker_settings
    from serving.retrain import retrain_home
    from towers.pipeline import DataSource
    from towers.train import TrainOptions

    home, registry, serving, flags = _home_with_new_events(tmp_path, planted_ranked_artefact)
    files = dict(zip(flags[::2], flags[1::2], strict=True))
    source = DataSource(dataset=None, interactions=files["--interactions"],
                        items=files["--items"], users=files["--users"])  # fmt: skip
    options = TrainOptions(epochs=1, batch_size=8, verbose=0)
    decision = retrain_home(home, source, options=options, tolerance=1.0)
    child = registry.root / decision.version
    assert (child / "ranker" / "config.json").exists()
    # The parent's ranker has a rated bag, small towers and 5 epochs: none of them defaults.
    assert ranker_settings(child / "ranker") == ranker_settings(serving / "ranker")


def test_a_retrain_refuses_a_damaged_parent_foreign_metadata_and_a_bad_tolerance(
    tmp_path, planted_artefact
):
    from serving.retrain import retrain_home
    from towers.pipeline import DataSource

    home, registry, serving, flags = _home_with_new_events(tmp_path, planted_artefact)
    files = dict(zip(flags[::2], flags[1::2], strict=True))
    source = DataSource(dataset=None, interactions=files["--interactions"],
                        items=files["--items"], users=files["--users"])  # fmt: skip
    for bad in (float("nan"), 1.5):
        with pytest.raises(ValueError, match="tolerance must be a finite number in"):
            retrain_home(home, source, tolerance=bad)
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("item_id,title\nX1,Other (2000)\nX2,Else (2001)\n")
    with pytest.raises(ValueError, match="describes 0 of the serving version's"):
        retrain_home(home, DataSource(dataset=None, interactions=files["--interactions"],
                                      items=str(foreign)))  # fmt: skip
    # A version whose files differ from its checksums is not retrained from.
    (serving / "content.npz").write_bytes(b"damaged")
    with pytest.raises(CorruptVersion, match="content.npz"):
        retrain_home(home, source)
    assert registry.versions() == [serving.name]
    # What a killed save into a staging directory left beside it is cleaned up.
    dead = 2**22 + 1
    left = registry.root / f"..staging-{dead}-abc.partial-{dead}-def"
    left.mkdir()
    assert f"..staging-{dead}-abc.partial-{dead}-def" in registry.clean_staging()
    assert not left.exists()
