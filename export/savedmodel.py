"""SavedModels for TF Serving: the query tower, brute-force retrieval, and ScaNN retrieval.

Each model has one ``serving_default`` signature on raw inputs:

``history``   string ``[batch, n]``: watched item IDs, oldest first; ``""`` pads anywhere, and
              unknown IDs are ignored. Any ``n``: the newest ``max_history`` known items form
              the bag, a repeated item counting once, at its last position (as the Python API).
``age``, ``gender``, ``occupation``, ``zip_prefix``
              only when the model was trained with demographics (ml-100k): float ``[batch]``
              (-1 or NaN if unknown) and strings ``[batch]`` (``""`` if unknown).

Outputs:

* ``query_tower``: ``user_vector`` float ``[batch, d]``.
* ``retrieval_brute_force`` and ``retrieval_scann``: ``item_ids`` string ``[batch, k]`` and
  ``scores`` float ``[batch, k]`` (the softmax logits), best first, with the request's history
  excluded. When fewer than ``k`` items are eligible the tail is ``""`` with score
  ``-3.4028235e38`` (JSON has no infinity).
* every model also returns ``model_version`` string ``[batch]``, the artefact version.
* where the artefact has a new-user tower, the retrieval models also return ``generator``
  string ``[batch]``, ``"new-user"`` or ``"main"``: each row is answered by the tower the
  service would pick (:mod:`export.routed`).

The brute-force model uses only stock TensorFlow ops (lookups, matmul, top-k), so stock TF
Serving loads it. The ScaNN model needs ScaNN's custom ops: TF Serving built with them (Google's
``tf-serving-scann`` image), or :func:`load_scann_model` in Python, which imports ScaNN first.

Directory layout (TF Serving's ``<model_base_path>/<numeric version>``)::

    OUTPUT/query_tower/1/  OUTPUT/retrieval_brute_force/1/  OUTPUT/retrieval_scann/1/
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np

from export.bags import NO_ITEM_SCORE, compact, distinct_known
from export.routed import RoutedModule, check_new_user_max
from towers._tf import tf
from towers.artefact import NEW_USER_DIR, artefact_version, load_artefact, replace_directory
from towers.features import DEMOGRAPHIC_COLUMNS
from towers.index import ItemIndex, configure
from towers.leftovers import remove_dead, work_dir
from towers.model import CandidateTower
from towers.presets import NEW_USER_MAX_RATINGS

MODEL_NAMES = ("query_tower", "retrieval_brute_force", "retrieval_scann")


def _signature(model: CandidateTower) -> dict[str, tf.TensorSpec]:
    spec = {"history": tf.TensorSpec([None, None], tf.string, name="history")}
    if model.demographic_vocabularies:
        spec["age"] = tf.TensorSpec([None], tf.float32, name="age")
        for col in DEMOGRAPHIC_COLUMNS:
            spec[col] = tf.TensorSpec([None], tf.string, name=col)
    return spec


class _QueryModule(tf.Module):
    """The tower behind a signature: raw request -> the model's input dict -> user vectors."""

    def __init__(self, model: CandidateTower, version: str) -> None:
        super().__init__()
        self.model = model
        self.max_history = model.config.max_history
        self.version = version

    def _model_inputs(self, request: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        history = request["history"]
        # The same left-padded bag of known items as serving.api: a repeated item counts once,
        # at its last position, and unknown IDs never push known ones out of the bag.
        keep = distinct_known(history, self.model.item_lookup(history) >= 2)
        history = compact(history, keep, self.max_history, "")
        batch = tf.shape(history)[0]
        inputs = {"history": history, "example_age": tf.zeros([batch], tf.float32)}
        for name in DEMOGRAPHIC_COLUMNS:
            if name in request:
                inputs[name] = request[name]
        if "age" in request:
            # JSON has no NaN: a negative age also means "unknown".
            age = request["age"]
            inputs["age"] = tf.where(age < 0, tf.fill(tf.shape(age), float("nan")), age)
        return inputs

    def user_vectors(self, request: dict[str, tf.Tensor]) -> tf.Tensor:
        return self.model(self._model_inputs(request), training=False)

    def versions(self, request: dict[str, tf.Tensor]) -> tf.Tensor:
        return tf.fill([tf.shape(request["history"])[0]], self.version)


class _IndexModule(_QueryModule):
    """A query module plus the artefact's indexed item vectors ``[w_i, b_i]`` and their IDs (the
    saved index, so upserted and deleted items match the Python API)."""

    def __init__(self, model: CandidateTower, version: str, k: int, index: ItemIndex) -> None:
        super().__init__(model, version)
        ids = index.item_ids
        self.k = min(k, len(ids))
        self.num_items = len(ids)
        self.item_ids = tf.constant(ids)
        self.vectors = index.vectors(ids).astype(np.float32)
        self.item_rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(ids), tf.range(len(ids), dtype=tf.int32)
            ),
            default_value=-1,
        )

    def queries(self, request: dict[str, tf.Tensor]) -> tf.Tensor:
        user = self.user_vectors(request)
        return tf.concat([user, tf.ones([tf.shape(user)[0], 1])], axis=1)

    def seen_rows(self, request: dict[str, tf.Tensor]) -> tf.Tensor:
        """Index row of each history item; -1 for pads and unknown IDs."""
        return self.item_rows.lookup(request["history"])

    def outputs(self, request, rows: tf.Tensor, scores: tf.Tensor) -> dict[str, tf.Tensor]:
        """The top ``k`` of candidate ``rows``/``scores`` after dropping seen items."""
        seen = self.seen_rows(request)
        hit = tf.reduce_any(tf.equal(rows[:, :, None], seen[:, None, :]), axis=2)
        scores = tf.where(hit | tf.math.is_nan(scores), float("-inf"), scores)
        top = tf.math.top_k(scores, k=tf.minimum(self.k, tf.shape(scores)[1]))
        best = tf.gather(rows, top.indices, batch_dims=1)
        valid = top.values > float("-inf")
        return {
            "item_ids": tf.where(valid, tf.gather(self.item_ids, tf.maximum(best, 0)), ""),
            "scores": tf.where(valid, top.values, NO_ITEM_SCORE),
            "model_version": self.versions(request),
        }


class _BruteForceModule(_IndexModule):
    def __init__(self, model: CandidateTower, version: str, k: int, index: ItemIndex) -> None:
        super().__init__(model, version, k, index)
        self.item_matrix = tf.constant(self.vectors)

    def top_k(self, request: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        logits = tf.matmul(self.queries(request), self.item_matrix, transpose_b=True)
        # Seen items sink to -inf, then one top-k over the whole catalogue.
        seen = self.seen_rows(request)
        where = tf.where(seen >= 0)
        index = tf.stack([tf.cast(where[:, 0], tf.int32), tf.gather_nd(seen, where)], axis=1)
        logits = tf.tensor_scatter_nd_update(
            logits, index, tf.fill([tf.shape(index)[0]], float("-inf"))
        )
        top = tf.math.top_k(logits, k=self.k)
        return self.outputs(request, top.indices, top.values)


class _ScannModule(_IndexModule):
    def __init__(self, model: CandidateTower, version: str, k: int, index: ItemIndex) -> None:
        super().__init__(model, version, k, index)
        from scann.scann_ops.py import scann_ops

        self._scann_ops = scann_ops
        builder = configure(scann_ops.builder(self.vectors, self.k, "dot_product"), index.params)
        self.searcher_state = builder.build().serialize_to_module()
        # The searcher's own resource name. ScaNN's searcher_from_module leaves it empty, and
        # two searchers in one SavedModel (export.routed: the main and the new-user tower) then
        # shared one resource: one tower searched the other's item vectors, and now and then
        # the process crashed setting it up.
        self.searcher_name = f"nextwatch-scann-{uuid.uuid4().hex}"

    def top_k(self, request: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        # Fetch room for every history item, so exclusion still leaves k.
        fetch = tf.minimum(self.k + tf.shape(request["history"])[1], self.num_items)
        state = self.searcher_state
        handle = self._scann_ops.tensors_to_scann(
            state.dataset, state.scann_config, state.serialized_partitioner,
            state.datapoint_to_token, state.ah_codebook, state.hashed_dataset,
            state.int8_dataset, state.int8_multipliers, state.dp_norms,
            shared_name=self.searcher_name,
        )  # fmt: skip
        searcher = self._scann_ops.ScannSearcher(handle)
        rows, scores = searcher.search_batched(self.queries(request), final_num_neighbors=fetch)
        return self.outputs(request, tf.cast(rows, tf.int32), scores)


def _save(
    module: _QueryModule,
    fn,
    path: Path,
    spec: dict | None = None,
    *,
    overwrite: bool = True,
    **options,
) -> Path:
    """Save ``module`` as the SavedModel ``path`` (``<base>/<name>/<version>``), all or nothing.

    The model is written into a temporary sibling ``<base>/<name>/.tmp-<version>-...`` (which
    TF Serving ignores: not a numeric name) and renamed to ``path`` only when complete, so a
    failed save leaves no partial version for TF Serving to load.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is false.
    OSError
        If TensorFlow fails to write the model (the message names ``path``).
    """
    spec = spec or _signature(module.model)
    if path.exists() and not overwrite:
        raise FileExistsError(_exists_message(path))
    signature = tf.function(fn, input_signature=[spec]).get_concrete_function()
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead(path.parent, f".tmp-{path.name}-")  # left by a save that was killed
    tmp = work_dir(path.parent, f".tmp-{path.name}-")
    try:
        tf.saved_model.save(
            module,
            str(tmp),
            signatures={"serving_default": signature},
            options=tf.saved_model.SaveOptions(**options),
        )
        if path.exists() and not overwrite:  # appeared while saving
            raise FileExistsError(_exists_message(path))
        replace_directory(tmp, path)
    except tf.errors.OpError as exc:
        raise OSError(f"could not write the SavedModel {path}: {exc.message}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    return path


def _exists_message(path: Path) -> str:
    return (
        f"SavedModel version {path} already exists: choose another serving version (the next "
        "one for TF Serving to pick up), or overwrite it (--overwrite)"
    )


def saved_index(artefact: Path, model: CandidateTower) -> ItemIndex:
    """The artefact's saved index (so upserted and deleted items match the Python API), or one
    built from the tower's item vectors for an artefact without ``index/``."""
    index_dir = artefact / "index"
    if (index_dir / "index.json").exists():
        return ItemIndex.load(index_dir)
    return ItemIndex.build(model.item_ids, model.item_matrix())


def _retrieval_module(
    name: str, model: CandidateTower, version: str, k: int, index: ItemIndex
) -> _IndexModule:
    kind = _BruteForceModule if name == "retrieval_brute_force" else _ScannModule
    return kind(model, version, k, index)


def export_savedmodels(
    artefact: str | Path,
    output: str | Path,
    k: int = 100,
    models: tuple[str, ...] = MODEL_NAMES,
    serving_version: int = 1,
    overwrite: bool = False,
    new_user_max: int | None = NEW_USER_MAX_RATINGS,
) -> dict[str, Path]:
    """Export the artefact's models under ``output/<name>/<serving_version>``.

    Each model is saved into a temporary directory beside its version directory and renamed into
    place when complete, so TF Serving never sees a partial version. Where the artefact has a
    new-user tower (``new_user/``), the retrieval models route each row as the API does
    (:mod:`export.routed`): a history of at most ``new_user_max`` distinct known items is
    answered by the new-user tower, and the output ``generator`` names the tower. The
    ``query_tower`` model is the main tower's (its vectors go with the main tower's items).

    Parameters
    ----------
    artefact : str or Path
        An artefact directory from ``nextwatch train-candidates``.
    output : str or Path
        TF Serving model base directory.
    k : int
        Items returned by the retrieval models (capped at the catalogue size).
    models : tuple of str
        Which of :data:`MODEL_NAMES` to export.
    serving_version : int
        TF Serving's numeric version directory.
    overwrite : bool
        Replace version directories that already exist (default: refuse).
    new_user_max : int or None
        The most known items a history may have to go to the new-user tower (the service's
        limit by default); None exports the main tower alone, as for an artefact without one.

    Returns
    -------
    dict of str to Path
        Each exported model's directory.

    Raises
    ------
    ValueError
        On a bad argument.
    FileExistsError
        If a model's version directory exists and ``overwrite`` is false (checked for every
        model before any is written).
    OSError
        If TensorFlow fails to write a model; the models written before it stay.
    """
    if isinstance(models, str):
        raise ValueError(f"models must be a sequence of names, not one string ({models!r})")
    unknown = sorted(set(models) - set(MODEL_NAMES))
    if unknown:
        raise ValueError(f"models has unknown names {unknown}; known: {list(MODEL_NAMES)}")
    models = tuple(dict.fromkeys(models))  # a name given twice is exported once
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if (
        isinstance(serving_version, bool)
        or not isinstance(serving_version, int)
        or (serving_version < 1)
    ):
        raise ValueError(f"serving_version must be a positive integer, got {serving_version!r}")
    check_new_user_max(new_user_max)
    output = Path(output)
    if not overwrite:
        for name in models:
            if (output / name / str(serving_version)).exists():
                raise FileExistsError(_exists_message(output / name / str(serving_version)))
    artefact = Path(artefact)
    model = load_artefact(artefact)
    version = artefact_version(artefact)
    index = saved_index(artefact, model)
    second = artefact / NEW_USER_DIR
    # Only the retrieval models route: a query_tower-only export never loads the second tower.
    routed = (
        new_user_max is not None
        and (second / "config.json").exists()
        and any(name != "query_tower" for name in models)
    )
    if routed:
        new_user_model = load_artefact(second)
        new_user_index = saved_index(second, new_user_model)
    out: dict[str, Path] = {}
    for name in models:
        path = output / name / str(serving_version)
        if name == "query_tower":
            module = _QueryModule(model, version)

            def fn(request, module=module):
                return {
                    "user_vector": module.user_vectors(request),
                    "model_version": module.versions(request),
                }

            out[name] = _save(module, fn, path, overwrite=overwrite)
            continue
        options = {"namespace_whitelist": ["Scann"]} if name == "retrieval_scann" else {}
        module = _retrieval_module(name, model, version, k, index)
        if not routed:
            out[name] = _save(module, module.top_k, path, overwrite=overwrite, **options)
            continue
        # The new-user tower's answers carry the artefact's version, as the service's do.
        second_module = _retrieval_module(name, new_user_model, version, k, new_user_index)
        both = RoutedModule(
            module, second_module, module.top_k, second_module.top_k, model, new_user_max,
            max(module.k, second_module.k),
        )  # fmt: skip
        spec = {**_signature(new_user_model), **_signature(model)}
        out[name] = _save(both, both.answer, path, spec, overwrite=overwrite, **options)
    return out


def load_scann_model(path: str | Path):
    """Load a ScaNN retrieval SavedModel: registers ScaNN's ops first, which a plain
    ``tf.saved_model.load`` would not find."""
    from scann.scann_ops.py import scann_ops  # noqa: F401  (registers the Scann>* ops)

    return tf.saved_model.load(str(path))
