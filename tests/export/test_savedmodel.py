"""The SavedModels load without the project (fresh interpreter, project imports blocked) and
give what the Python API gives."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from export.savedmodel import NO_ITEM_SCORE, export_savedmodels
from serving.api import Recommender, distinct_history
from towers.features import query_inputs

K = 6
# pads anywhere; max_history is 3: then a repeat (the API's bag is B, A), a repeat in a history
# longer than max_history with an unknown ID (bag C, D, A), a longer history (bag C, D, E)
HISTORIES = [
    ["A", "", "", "", "", ""], ["", "", "", "", "", ""], ["zzz", "", "C", "", "", ""],
    ["A", "B", "C", "", "", ""], ["A", "B", "A", "", "", ""], ["B", "A", "C", "zzz", "D", "A"],
    ["A", "B", "C", "D", "E", ""],
]  # fmt: skip
BAGS = {4: ["B", "A"], 5: ["C", "D", "A"], 6: ["C", "D", "E"]}  # the API's, by row
FEATURES = {
    "age": [20.0, float("nan"), 55.0, -1.0, 30.0, 41.0, -1.0],  # NaN or negative: unknown
    "gender": ["M", "", "F", "other", "F", "M", ""],
    "occupation": ["artist", "", "student", "student", "artist", "student", ""],
    "zip_prefix": ["0", "", "3", "9", "1", "2", ""],
}

LOADER = textwrap.dedent(
    """
    import json, sys
    for name in ("towers", "ranking", "serving", "export"):
        sys.modules[name] = None  # the project must not be needed
    import numpy as np
    import tensorflow as tf
    base, request_path = sys.argv[1], sys.argv[2]
    request = json.load(open(request_path))
    feed = {"history": tf.constant(request["history"])}
    for name, values in request["features"].items():
        feed[name] = tf.constant(values, tf.float32 if name == "age" else tf.string)
    out = {}
    for name in ("query_tower", "retrieval_brute_force", "retrieval_scann"):
        if name == "retrieval_scann":
            import scann  # noqa: F401  (registers ScaNN's ops, as export.load_scann_model does)
        model = tf.saved_model.load(f"{base}/{name}/1")
        result = model.signatures["serving_default"](**feed)
        out[name] = {k: v.numpy().tolist() for k, v in result.items()}
        for key in ("item_ids", "model_version", "generator"):
            if key in out[name]:
                out[name][key] = [
                    [b.decode() for b in row] if isinstance(row, list) else row.decode()
                    for row in out[name][key]
                ]
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def exported(planted_artefact, tmp_path_factory):
    base = tmp_path_factory.mktemp("savedmodels")
    export_savedmodels(planted_artefact, base, k=K)
    return base


@pytest.fixture(scope="module")
def outputs(exported, tmp_path_factory):
    work = tmp_path_factory.mktemp("fresh")
    request = work / "request.json"
    request.write_text(json.dumps({"history": HISTORIES, "features": FEATURES}))
    script = work / "load.py"
    script.write_text(LOADER)
    done = subprocess.run(
        [sys.executable, str(script), str(exported), str(request)],
        cwd=work, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _features(row: int) -> dict[str, object]:
    """Row ``row`` of ``FEATURES`` as the API's ``features`` (unknown ones left out)."""
    features = {name: values[row] for name, values in FEATURES.items()}
    if not features["age"] >= 0:
        features["age"] = None
    return {k: v for k, v in features.items() if v not in ("", None)}


def _api(planted_artefact):
    rec = Recommender.load(planted_artefact)
    results = []
    for row, history in enumerate(HISTORIES):
        results.append(
            rec.recommend(history=[h for h in history if h], features=_features(row), k=K)
        )
    return rec, results


def test_brute_force_savedmodel_equals_the_api_exactly(planted_artefact, outputs):
    rec, expected = _api(planted_artefact)
    got = outputs["retrieval_brute_force"]
    for row, result in enumerate(expected):
        n = len(result)
        assert got["item_ids"][row][:n] == result.item_ids
        np.testing.assert_allclose(
            got["scores"][row][:n], [r.score for r in result], rtol=1e-5, atol=1e-5
        )
        # fewer eligible items than k: the tail is padding
        assert got["item_ids"][row][n:] == [""] * (K - n)
        assert got["scores"][row][n:] == [NO_ITEM_SCORE] * (K - n)
    assert len(expected[3]) == 5  # A, B, C seen: 5 of 8 left
    assert got["model_version"] == [rec.version] * len(HISTORIES)


def test_scann_savedmodel_overlaps_the_api(planted_artefact, outputs):
    _, expected = _api(planted_artefact)
    got = outputs["retrieval_scann"]
    for row, result in enumerate(expected):
        overlap = len(set(got["item_ids"][row]) & set(result.item_ids)) / len(result)
        assert overlap >= 0.95


def test_query_tower_savedmodel_equals_the_encoder(planted_artefact, outputs):
    rec, _ = _api(planted_artefact)
    known_only = rec.retriever.encoder.known_only
    inputs = query_inputs(
        [known_only(distinct_history([h for h in history if h])) for history in HISTORIES],
        max_history=rec.max_history,
        demographics={
            **{k: np.array(v, dtype=object) for k, v in FEATURES.items() if k != "age"},
            "age": np.array([a if a >= 0 else np.nan for a in FEATURES["age"]], np.float32),
        },
    )
    np.testing.assert_allclose(
        outputs["query_tower"]["user_vector"], rec.retriever.encoder(inputs), rtol=1e-5, atol=1e-5
    )


def test_a_repeat_counts_once_and_the_newest_max_history_known_items_form_the_bag(
    planted_artefact, outputs
):
    rec, expected = _api(planted_artefact)
    assert rec.max_history == 3
    rows = sorted(BAGS)
    want = rec.encode([BAGS[r] for r in rows], [_features(r) for r in rows])[:, :-1]
    got = np.array(outputs["query_tower"]["user_vector"])[rows]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for row in rows:  # and retrieval ranks by that vector, excluding every history item
        result, brute = expected[row], outputs["retrieval_brute_force"]
        assert brute["item_ids"][row][: len(result)] == result.item_ids
        np.testing.assert_allclose(
            brute["scores"][row][: len(result)], [r.score for r in result], rtol=1e-5, atol=1e-5
        )


def test_saved_model_cli_runs_the_brute_force_model(planted_artefact, exported, tmp_path):
    cli = Path(sys.executable).with_name("saved_model_cli")
    exprs = 'history=[["A", ""]];age=[20.0];gender=["M"];occupation=["artist"];zip_prefix=["0"]'
    done = subprocess.run(
        [str(cli), "run", "--dir", str(exported / "retrieval_brute_force" / "1"),
         "--tag_set", "serve", "--signature_def", "serving_default",
         "--input_exprs", exprs, "--outdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ids = [i.decode() for i in np.load(tmp_path / "item_ids.npy", allow_pickle=True)[0]]
    _, expected = _api(planted_artefact)
    assert ids == expected[0].item_ids


def test_bad_arguments_are_named(planted_artefact, tmp_path):
    with pytest.raises(ValueError, match="models has unknown names"):
        export_savedmodels(planted_artefact, tmp_path, models=("onnx",))
    with pytest.raises(ValueError, match="k must be"):
        export_savedmodels(planted_artefact, tmp_path, k=0)
    with pytest.raises(ValueError, match="not one string"):
        export_savedmodels(planted_artefact, tmp_path, models="query_tower")


def test_a_model_named_twice_is_exported_once(planted_artefact, tmp_path, monkeypatch):
    import export.savedmodel

    saved = []
    monkeypatch.setattr(export.savedmodel, "_save", lambda module, fn, path, *a, **kw: (
        saved.append(path.parent.name) or path))  # fmt: skip
    export_savedmodels(planted_artefact, tmp_path, models=("query_tower", "query_tower"))
    assert saved == ["query_tower"]


def test_exports_leave_only_version_directories(exported):
    for name in ("query_tower", "retrieval_brute_force", "retrieval_scann"):
        assert [p.name for p in (exported / name).iterdir()] == ["1"]  # no .tmp-* left


def test_an_existing_version_is_refused_unless_overwrite(planted_artefact, tmp_path):
    first = export_savedmodels(planted_artefact, tmp_path, models=("query_tower",))
    pb = first["query_tower"] / "saved_model.pb"
    before = pb.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match=r"version .*query_tower/1 already exists"):
        export_savedmodels(planted_artefact, tmp_path, models=("query_tower",))
    assert pb.stat().st_mtime_ns == before  # untouched
    # checked for every model before any is written: retrieval_brute_force/1 is not created
    with pytest.raises(FileExistsError, match=r"query_tower/1 already exists"):
        export_savedmodels(
            planted_artefact, tmp_path, models=("retrieval_brute_force", "query_tower")
        )
    assert not (tmp_path / "retrieval_brute_force").exists()
    again = export_savedmodels(planted_artefact, tmp_path, models=("query_tower",), overwrite=True)
    assert (again["query_tower"] / "saved_model.pb").exists()
    assert [p.name for p in (tmp_path / "query_tower").iterdir()] == ["1"]  # no .old-* left


def test_a_failed_save_leaves_no_version_directory(planted_artefact, tmp_path, monkeypatch):
    from towers._tf import tf

    def full_disk(module, export_dir, **kwargs):
        (Path(export_dir) / "saved_model.pb").write_bytes(b"partial")
        raise tf.errors.OutOfRangeError(None, None, "File too large")

    monkeypatch.setattr(tf.saved_model, "save", full_disk)
    with pytest.raises(OSError, match=r"could not write the SavedModel .*query_tower/1: File too"):
        export_savedmodels(planted_artefact, tmp_path, models=("query_tower",))
    assert list((tmp_path / "query_tower").iterdir()) == []  # no partial "1", no .tmp-*


def test_in_graph_dedupe_keeps_each_known_item_at_its_last_known_position():
    import tensorflow as tf

    from export.savedmodel import distinct_known

    rng = np.random.default_rng(0)
    for _ in range(100):
        b, n = int(rng.integers(1, 4)), int(rng.integers(0, 10))
        history = rng.choice(list("ABCD") + [""], size=(b, n))
        known = (rng.random((b, n)) < 0.8) & (history != "")
        expected = np.zeros((b, n), bool)
        for r in range(b):
            for j in range(n):  # kept: known, and no known repeat of the item after it
                later = [known[r, k] and history[r, k] == history[r, j] for k in range(j + 1, n)]
                expected[r, j] = known[r, j] and not any(later)
        got = distinct_known(tf.constant(history.astype(str)), tf.constant(known)).numpy()
        np.testing.assert_array_equal(got, expected)
