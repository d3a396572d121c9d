"""Warm start: the grown vocabulary keeps every parent row, new items start from the content
projection, and the continued model serves them (API and a SavedModel in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from export.savedmodel import export_savedmodels
from serving.api import Recommender
from tests.conftest import planted_dataset
from towers.artefact import load_artefact, load_optimizer_state, save_artefact
from towers.content import ContentProjection
from towers.features import query_inputs
from towers.model import TowerConfig
from towers.optim import training_state
from towers.train import TrainOptions, train_tower
from towers.warmstart import WarmStart, grow, warm_start

NEW_SINCE = 10_000


def grown_dataset():
    """The planted log, then (from t = 10,000) 30 users watch a new comedy "I" after A, and
    a new item "J" nobody has metadata for is watched twice."""
    data = planted_dataset()
    rows = [(f"u{u}", "I", 5.0, NEW_SINCE + u) for u in range(30)]
    rows += [("u50", "J", 3.0, NEW_SINCE + 100), ("u51", "J", 3.0, NEW_SINCE + 101)]
    new = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.concat(
        [data.items, pd.DataFrame({"item_id": ["I"], "title": ["Movie I (1990)"], "year": [1990.0],
                                   "genres": [["Comedy"]], "tags": [[]]})],
        ignore_index=True,
    )  # fmt: skip
    return data.__class__(
        data.name, pd.concat([data.interactions, new], ignore_index=True), items, data.users,
        data.checksum,
    )  # fmt: skip


@pytest.fixture(scope="module")
def parent(planted_artefact):
    return load_artefact(planted_artefact)


def test_growth_keeps_every_parent_row_and_places_new_items_by_metadata(parent, planted_artefact):
    data = grown_dataset()
    projection = ContentProjection.load(planted_artefact)
    child, new_ids = grow(parent, data, (0, NEW_SINCE + 200), projection)
    assert new_ids == ["I", "J"]  # most frequent first
    assert child.item_ids == parent.item_ids + ["I", "J"]
    n = parent.num_items
    np.testing.assert_array_equal(child.item_matrix()[:n], parent.item_matrix())
    np.testing.assert_array_equal(
        child.history_embedding.embeddings.numpy()[: n + 2],
        parent.history_embedding.embeddings.numpy(),
    )
    # The grown model scores the parent's items exactly as the parent does.
    inputs = query_inputs([["A"], ["C", "D"], []], max_history=parent.config.max_history)
    np.testing.assert_allclose(
        child.logits(child(inputs)).numpy()[:, :n], parent.logits(parent(inputs)).numpy(),
        rtol=1e-6, atol=1e-6,
    )  # fmt: skip
    # I is placed by its metadata, as POST /v1/items would place it.
    meta = data.items[data.items["item_id"] == "I"]
    np.testing.assert_allclose(
        child.item_matrix()[n], projection.predict([["g:comedy", "y:1990s", "w:movie"]])[0],
        rtol=1e-5,
    )  # fmt: skip
    assert not meta.empty


def test_warm_start_trains_on_new_events_plus_a_replay_sample(parent, planted_artefact, tmp_path):
    data = grown_dataset()
    result, lineage = warm_start(
        parent, data, WarmStart(since=NEW_SINCE, replay_fraction=0.5),
        TrainOptions(epochs=20, batch_size=16, learning_rate=0.03, verbose=0),
        ContentProjection.load(planted_artefact),
    )  # fmt: skip
    assert lineage["new_events"] == 32 and lineage["new_items"] == 2
    assert 0 < lineage["replayed_examples"] < 240
    assert result.metrics["examples"] == 32 + lineage["replayed_examples"]
    model = result.model
    assert model.item_ids[: parent.num_items] == parent.item_ids
    # The new events taught it: after A, B and a horror film comes I (for the first 30 users),
    # and not after C, D and a horror film (nobody of those watched I).
    inputs = query_inputs([["A", "B", "E"], ["C", "D", "F"]], max_history=3)
    logits = model.logits(model(inputs)).numpy()
    i = model.item_ids.index("I")
    unseen = [n for n, item in enumerate(model.item_ids) if item not in ("A", "B", "E")]
    assert model.item_ids[unseen[int(np.argmax(logits[0, unseen]))]] == "I"
    assert logits[0, i] > logits[1, i]
    # Saved, the new version serves the new items from the Python API and from a SavedModel
    # loaded without the project.
    artefact = save_artefact(result, tmp_path / "child", {"lineage": lineage}, data=data)
    rec = Recommender.load(artefact)
    assert "I" in rec.recommend(history=["A", "B", "E"], k=3).item_ids
    export_savedmodels(artefact, tmp_path / "sm", k=3, models=("retrieval_brute_force",))
    script = (
        "import sys, json\n"
        "for n in ('towers', 'ranking', 'serving', 'export'): sys.modules[n] = None\n"
        "import tensorflow as tf\n"
        f"m = tf.saved_model.load({str(tmp_path / 'sm' / 'retrieval_brute_force' / '1')!r})\n"
        "out = m.signatures['serving_default'](history=tf.constant([['A', 'B', 'E']]),\n"
        "    age=tf.constant([30.0]), gender=tf.constant(['M']),\n"
        "    occupation=tf.constant(['student']), zip_prefix=tf.constant(['1']))\n"
        "print(json.dumps([b.decode() for b in out['item_ids'].numpy()[0]]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "I" in json.loads(done.stdout.strip().splitlines()[-1])


def test_a_warm_start_needs_new_events(parent):
    with pytest.raises(ValueError, match="no events at or after"):
        warm_start(parent, planted_dataset(), WarmStart(since=NEW_SINCE))
    with pytest.raises(ValueError, match="replay_fraction"):
        WarmStart(replay_fraction=1.5)


def test_a_warm_start_continues_the_parent_optimizer_saved_with_it(parent, planted_artefact):
    state = load_optimizer_state(planted_artefact)
    assert state is not None and int(state["iterations"]) > 0
    assert sum(k.startswith("m") for k in state) == len(parent.trainable_variables)
    data = grown_dataset()
    options = TrainOptions(epochs=1, batch_size=16, learning_rate=0.01, verbose=0)
    steps = []
    for plan in (WarmStart(since=NEW_SINCE), WarmStart(since=NEW_SINCE, continue_optimizer=False)):
        result, lineage = warm_start(parent, data, plan, options, None, state)
        assert lineage["optimizer"] == ("continued" if plan.continue_optimizer else "fresh")
        steps.append(int(training_state(result.model)["iterations"]))
    batches = -(-result.metrics["examples"] // 16)  # one epoch
    # Continued, the step count goes on from the parent's; fresh, it starts at 0.
    assert steps == [int(state["iterations"]) + batches, batches]
    # Without a saved state (an artefact from before optimizer.npz), the optimizer is fresh.
    _, lineage = warm_start(parent, data, WarmStart(since=NEW_SINCE), options)
    assert lineage["optimizer"] == "fresh"


def test_a_warm_start_can_switch_the_softmax_and_records_it(parent, planted_artefact):
    assert parent.full_softmax
    with pytest.raises(ValueError, match="softmax must be"):
        WarmStart(softmax="partial")
    options = TrainOptions(epochs=1, batch_size=16, learning_rate=0.01, verbose=0)
    result, lineage = warm_start(
        parent, grown_dataset(), WarmStart(since=NEW_SINCE, softmax="sampled"), options,
        ContentProjection.load(planted_artefact), load_optimizer_state(planted_artefact),
    )  # fmt: skip
    assert lineage["softmax"] == "sampled" and lineage["optimizer"] == "continued"
    assert not result.model.full_softmax and result.model.config.softmax == "sampled"
    # The grown vocabulary keeps the parent's rows in the parent's order.
    assert result.model.item_ids[: parent.num_items] == parent.item_ids
    _, kept = warm_start(parent, grown_dataset(), WarmStart(since=NEW_SINCE), options)
    assert kept["softmax"] == "full"


@pytest.mark.parametrize("fits", [True, False])
def test_a_sampled_parent_warm_starts_with_the_full_softmax_where_the_catalogue_fits(fits):
    # 8 planted items + I and J: the grown catalogue of 10 fits a limit of 10, not one of 9.
    config = TowerConfig(
        embedding_dim=8, token_dim=4, output_dim=8, max_history=3, recent_history=2,
        softmax="sampled", num_negatives=4, full_softmax_max_items=10 if fits else 9,
    )  # fmt: skip
    options = TrainOptions(epochs=1, batch_size=32, learning_rate=0.01, verbose=0)
    sampled = train_tower(planted_dataset(), config, options).model
    assert not sampled.full_softmax and sampled.num_items == 8
    result, lineage = warm_start(sampled, grown_dataset(), WarmStart(since=NEW_SINCE), options)
    assert result.model.num_items == 10
    assert lineage["softmax"] == ("full" if fits else "sampled")
    # "auto": full while it fits, sampled again if the catalogue outgrows the limit.
    assert result.model.config.softmax == ("auto" if fits else "sampled")
