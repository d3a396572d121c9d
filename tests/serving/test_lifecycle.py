"""The model lifecycle's edges: a registry that cannot be trusted, outputs that would change a
published version, a pointer left behind by a run that died, retrains that could not be
checked, and processes that outlive the service."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.cli import main
from serving.pointer import read_pointer, write_pointer
from serving.registry import CorruptVersion, Registry
from serving.retrain import check_store_exists, reconcile_pointer, retrain_home
from serving.serve import ServeOptions
from serving.store import Event, open_store
from tests.conftest import child_survives_its_parent, planted_dataset
from tests.serving.test_promotion import _version_of
from towers.artefact import check_outside_registry
from towers.files import load_arrays
from towers.pipeline import DataSource


@pytest.fixture()
def registry(tmp_path):
    return Registry(tmp_path / "models")


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "has no CHECKSUMS.json"), ("[]", "not a map of file names"),
     ("{not json", "CHECKSUMS.json is unreadable")],
    ids=["missing", "a list", "not JSON"],
)  # fmt: skip
def test_a_version_whose_checksums_cannot_be_read_is_corrupt(
    registry, planted_artefact, content, message
):
    path = _version_of(planted_artefact, registry, "20260101T000000Z-v")
    checksums = path / "CHECKSUMS.json"
    if content is None:
        checksums.unlink()
    else:
        checksums.write_text(content)
    with pytest.raises(CorruptVersion, match=f"version 20260101T000000Z-v.*{message}"):
        registry.verify(path.name)


def test_outputs_inside_a_registry_are_refused(tmp_path):
    root = tmp_path / "models"
    (root / "v1" / "ranker").mkdir(parents=True)
    (root / "v1" / "CHECKSUMS.json").write_text("{}")
    (root / "CURRENT").write_text("v1")
    for inside in (root / "v1", root / "v1" / "ranker", root / "mine"):
        with pytest.raises(FileExistsError, match="registry"):
            check_outside_registry(inside)
    check_outside_registry(tmp_path / "elsewhere")  # outside: fine
    check_outside_registry(root)  # the root itself is no version (retrain --home's own check)


def test_a_pointer_left_behind_by_a_dead_retrain_follows_the_promoted_version(
    tmp_path, registry, planted_artefact
):
    home = registry.root.parent
    old = _version_of(planted_artefact, registry, "20260101T000000Z-old")
    new = _version_of(planted_artefact, registry, "20260102T000000Z-new")
    registry.promote(old.name)
    write_pointer(home, old)
    registry.promote(new.name)  # ... and the run died before it wrote the pointer
    reconcile_pointer(home, registry)
    assert read_pointer(home) == new.resolve()
    write_pointer(home, planted_artefact)  # serve --artefact: not the registry's to change
    reconcile_pointer(home, registry)
    assert read_pointer(home) == Path(planted_artefact).resolve()


def test_a_mistyped_sqlite_store_is_not_created(tmp_path):
    typo = tmp_path / "sub" / "events.db"
    with pytest.raises(FileNotFoundError, match="no event store at .*sub/events.db"):
        check_store_exists(f"sqlite:///{typo}")
    assert not typo.parent.exists()
    check_store_exists("postgresql://db/x")  # the server says whether it exists


def test_a_retrain_that_could_not_be_checked_stops_before_training(
    tmp_path, registry, planted_artefact, monkeypatch
):
    import serving.retrain

    home = registry.root.parent
    serving_version = _version_of(planted_artefact, registry, "20260101T000000Z-serving")
    registry.promote(serving_version.name)
    data = planted_dataset()
    last = data.interactions.sort_values("timestamp").groupby("user_id").tail(1)
    with open_store(f"sqlite:///{home / 'events.db'}") as store:
        store.import_users(data.users)
        store.import_events(data.interactions)
        # The newest events re-watch what their users watched last: nothing to check on.
        store.append([Event(r.user_id, r.item_id, "watch", None, 9_000 + n)
                      for n, r in enumerate(last.itertuples())])  # fmt: skip
    monkeypatch.setattr(serving.retrain, "retrain_artefact", lambda *a, **k: pytest.fail("trained"))
    items = tmp_path / "items.csv"
    data.items.assign(genres=data.items["genres"].map("|".join), tags="").to_csv(items, index=False)
    log = tmp_path / "log.csv"
    data.interactions.rename(columns={"user_id": "user", "item_id": "item"}).to_csv(
        log, index=False
    )
    source = DataSource(dataset=None, interactions=str(log), items=str(items))
    with pytest.raises(ValueError, match="only re-watch items"):
        retrain_home(home, source)
    assert registry.versions() == [serving_version.name]  # nothing published


def test_a_timer_must_be_finite_and_an_unreachable_store_is_a_clean_error(
    tmp_path, planted_artefact, caplog
):
    with pytest.raises(ValueError, match=r"--retrain-every-seconds\) must be a finite number"):
        ServeOptions(tmp_path, retrain_every_seconds=float("inf"))
    args = ["serve", "--home", str(tmp_path / "home"), "--artefact", str(planted_artefact),
            "--store", "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"]  # fmt: skip
    assert main(args) == 2
    assert "PostgreSQL store" in caplog.text


def test_an_empty_array_file_is_named(tmp_path):
    empty = tmp_path / "optimizer.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="optimizer.npz is not a readable array file"):
        load_arrays(empty)
    np.savez(tmp_path / "ok.npz", a=np.arange(2))
    assert load_arrays(tmp_path / "ok.npz")["a"].tolist() == [0, 1]


def test_a_scheduled_retrain_ends_with_the_service(tmp_path):
    # The "service" starts a "retrain" as the scheduler does, then is killed.
    service = (
        "import os, subprocess, sys; from towers.leftovers import end_with_parent; "
        "parent = os.getpid(); "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
        "preexec_fn=lambda: end_with_parent(parent)); print(child.pid, flush=True); input()"
    )
    assert not child_survives_its_parent(service)


def test_serve_refuses_a_current_version_that_is_gone_before_moving_the_pointer(
    tmp_path, registry, planted_artefact, caplog
):
    home = registry.root.parent
    good = _version_of(planted_artefact, registry, "20260101T000000Z-good")
    registry.promote(good.name)
    write_pointer(home, good)
    (registry.root / "CURRENT").write_text("20260109T000000Z-gone")
    assert main(["serve", "--home", str(home), "--no-seed"]) == 2
    assert "20260109T000000Z-gone is no longer published" in caplog.text
    assert read_pointer(home) == good.resolve()  # the workers still follow the good one
