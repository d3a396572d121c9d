"""The training step's cost against the catalogue's size, and where its time goes.

Part ``steps`` of ``benchmarks/scale.py`` (``python benchmarks/scale.py --parts steps``) runs
:func:`step_costs`; each measurement is a fresh process running this file:

    python benchmarks/step_cost.py cost 1000000 sampled fixed     # one step-cost measurement
    python benchmarks/step_cost.py profile 1000000                # its per-op profile
    python benchmarks/step_cost.py profile 1000000 popular        # with popularity-drawn items
    python benchmarks/step_cost.py dedup 1000000 popular          # LazyAdam now and before 751e88f
    python benchmarks/step_cost.py cost 1000000 sampled fixed:40000  # 40k items at any size
    python benchmarks/step_cost.py growth benchmarks/results/scale.json  # every run, pooled
    python benchmarks/step_cost.py startup 1000000                # seconds to start training

A step is one ``train_step`` of the candidate tower on fixed inputs (no input pipeline): batch
1024, 50-item histories, no token features, 1000 sampled negatives.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import json_tail, run_command

ITEMS_AXIS = (10_000, 100_000, 1_000_000)
# The same work at every size, one size past 1M: does a step keep growing with the tables?
FIXED_AXIS = (*ITEMS_AXIS, 3_000_000)
FIXED_SET = 10_000  # items a "fixed" draw uses, at every catalogue size
PROFILED = (10_000, 1_000_000)
# Op types by what they do to the tables (TF profiler "framework op" types).
OP_GROUPS = {
    "string-ID hash lookup": ("LookupTableFindV2", "Equal"),
    "row gathers": ("ResourceGather", "GatherV2"),
    "row scatters (LazyAdam)": (
        "ResourceScatterSub",
        "ResourceScatterUpdate",
        "ResourceScatterAdd",
    ),
    "unique and segment sums": ("Unique", "UnsortedSegmentSum"),
    "matmuls and softmax": (
        "_MklMatMul",
        "_MklNativeFusedMatMul",
        "MatMul",
        "SoftmaxCrossEntropyWithLogits",
    ),
}


def _tower(items: int, softmax: str):
    """The benchmark's tower over ``items`` IDs ``i0, i1, ...``, counts falling as 1 / rank."""
    import numpy as np

    from towers.model import CandidateTower, TowerConfig

    ids = [f"i{i}" for i in range(items)]
    return CandidateTower(TowerConfig(softmax=softmax, use_tokens=False), ids,
                          item_counts=1.0 / np.arange(1, items + 1))  # fmt: skip


def _batch(ids: list[str], histories: str, batch: int):
    """Inputs, labels and the number of distinct items of one batch (:func:`build_step`'s
    draws)."""
    import numpy as np

    from towers._tf import tf
    from towers.features import query_inputs

    items = len(ids)
    rng = np.random.default_rng(0)
    pick = np.array(ids, dtype=object)
    if histories == "uniform":
        p = None
    elif histories == "popular":
        p = np.arange(1, items + 1) ** -0.9
        p /= p.sum()
    elif histories.partition(":")[0] == "fixed":
        p = None
        size = int(histories.partition(":")[2] or FIXED_SET)
        pick = pick[np.sort(rng.choice(items, min(size, items), replace=False))]
    else:
        raise ValueError(
            f"histories must be 'uniform', 'popular', 'fixed' or 'fixed:SIZE', got {histories!r}"
        )
    hist = rng.choice(pick, (batch, 50), p=p)
    label_ids = rng.choice(pick, batch, p=p)
    distinct = len(set(hist.ravel().tolist()) | set(label_ids.tolist()))
    inputs = {k: tf.constant(v) for k, v in query_inputs(hist, max_history=50).items()
              if k in ("history", "example_age")}  # fmt: skip
    return inputs, tf.constant(label_ids), distinct


def build_step(items: int, softmax: str, histories: str, batch: int = 1024, optimizer=None):
    """A compiled training step and the number of distinct items its batch touches.

    ``histories`` ``"uniform"`` draws history items and labels uniformly from the catalogue (the
    worst case for memory locality); ``"popular"`` draws them by popularity, rank ** -0.9 as in
    the synthetic worlds (what real logs look like); ``"fixed"`` draws them uniformly from the
    same number of items (``FIXED_SET``, spread over the catalogue; ``"fixed:SIZE"`` from
    ``SIZE`` items) at every catalogue size, so that each step touches as many rows at 1M items
    as at 10k and only the tables' size changes.
    ``optimizer`` (a ``learning rate -> optimizer`` callable) replaces the trainer's.
    """
    from towers._tf import tf
    from towers.train import optimizer_for

    model = _tower(items, softmax)
    inputs, labels, distinct = _batch(model.item_ids, histories, batch)
    model(inputs)
    model.compile(optimizer=optimizer(1e-3) if optimizer else optimizer_for(model, 1e-3))
    step = tf.function(lambda: model.train_step((inputs, labels)))
    for _ in range(5):
        step()
    return step, distinct


def _median_ms(step, steps: int) -> float:
    import numpy as np

    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()["loss"].numpy()
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1e3, 2)


def step_cost(
    items: int, softmax: str, histories: str = "uniform", batch: int = 1024, steps: int = 60
) -> dict:
    """Milliseconds per training step (median of ``steps`` after warm-up); see
    :func:`build_step` for the draws. With ``uniform`` and ``popular`` a bigger catalogue also
    means more distinct items per batch (reported as ``distinct_rows``)."""
    step, distinct = build_step(items, softmax, histories, batch)
    return {"items": items, "softmax": softmax, "histories": histories, "batch": batch,
            "distinct_rows": distinct, "ms_per_step": _median_ms(step, steps)}  # fmt: skip


def dedup_ab(items: int, histories: str = "popular", blocks: int = 20) -> dict:
    """The sampled step with ``towers.optim.LazyAdam`` as it is against as it was before
    ``751e88f``, which summed a sparse gradient's repeated rows twice, with a segment sum each
    time (Keras' deduplication, then its own), where it now sums them once and skips the
    segment sum for rows already distinct. Both run in one process, each on its own copy of the
    model, in ``blocks`` alternating blocks of 10 steps; median milliseconds per step."""
    import numpy as np

    from towers._tf import keras
    from towers.optim import LazyAdam

    class Before(LazyAdam):
        def _deduplicate_sparse_grad(self, grads):
            stock = keras.optimizers.Adam._deduplicate_sparse_grad
            return stock(self, stock(self, grads))

    steps = {}
    for name, make in (("before", Before), ("now", LazyAdam)):
        steps[name], distinct = build_step(items, "sampled", histories, optimizer=make)
    times: dict[str, list[float]] = {"before": [], "now": []}
    for block in range(blocks):
        for name in ("before", "now") if block % 2 == 0 else ("now", "before"):
            for _ in range(10):
                start = time.perf_counter()
                steps[name]()["loss"].numpy()
                times[name].append(time.perf_counter() - start)
    ms = {name: round(float(np.median(t)) * 1e3, 2) for name, t in times.items()}
    return {"items": items, "histories": histories, "distinct_rows": distinct, "median_ms": ms,
            "change": round(ms["now"] / ms["before"] - 1, 3)}  # fmt: skip


def startup_cost(items: int) -> dict:
    """Seconds to start training at ``items`` items: building the tower, Keras' first ``fit``
    of 3 steps (tracing its train function, with the optimizer's slots) and a second one, and
    tracing the step alone as :func:`build_step` does (``tf.function`` of ``train_step``)."""
    from towers._tf import tf
    from towers.train import optimizer_for

    start = time.perf_counter()
    model = _tower(items, "sampled")
    out = {"items": items, "build_seconds": time.perf_counter() - start}
    inputs, labels, _ = _batch(model.item_ids, "uniform", 1024)
    data = tf.data.Dataset.from_tensors((inputs, labels)).repeat()
    model.compile(optimizer=optimizer_for(model, 1e-3))
    for name in ("first_fit_seconds", "second_fit_seconds"):
        start = time.perf_counter()
        model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)
        out[name] = time.perf_counter() - start
    step = tf.function(lambda: model.train_step((inputs, labels)))
    start = time.perf_counter()
    step.get_concrete_function()
    out["trace_seconds"] = time.perf_counter() - start
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


def step_profile(items: int, histories: str = "fixed", steps: int = 30) -> dict:
    """Per-op self time of the sampled step under the TF profiler, ms per step, for the
    ``histories`` draw (:func:`build_step`; the fixed draw by default).

    ``groups`` sums the op types of ``OP_GROUPS``; ``busy_ms`` is all ops' self time (on both
    cores, so it can exceed the wall time), ``wall_ms`` the step's median outside the profiler.
    """
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    from towers._tf import tf

    step, distinct = build_step(items, "sampled", histories)
    wall = _median_ms(step, 30)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            step()["loss"].numpy()
        tf.profiler.experimental.stop()
        planes = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
        data, ok = plugin.xspace_to_tools_data(planes, "framework_op_stats")
    if not ok:
        raise RuntimeError(f"the TF profiler gave no op statistics: {data[:200]!r}")
    table = json.loads(data)[0]
    cols = [c["id"] for c in table["cols"]]
    rows = [dict(zip(cols, [c.get("v") if c else None for c in r["c"]], strict=False))
            for r in table["rows"]]  # fmt: skip
    by_type: collections.Counter = collections.Counter()
    for row in rows:
        if row["type"] != "IDLE":
            by_type[row["type"]] += float(row["total_self_time"]) / 1e3 / steps
    grouped = {name: round(sum(by_type[t] for t in types), 2) for name, types in OP_GROUPS.items()}
    named = {t for types in OP_GROUPS.values() for t in types}
    grouped["everything else"] = round(sum(v for t, v in by_type.items() if t not in named), 2)
    return {"items": items, "histories": histories, "distinct_rows": distinct, "wall_ms": wall,
            "busy_ms": round(sum(by_type.values()), 2), "groups": grouped,
            "op_types": {t: round(v, 3) for t, v in by_type.most_common(25)}}  # fmt: skip


# glibc's malloc asks the kernel for transparent huge pages (madvise mode) for its mappings.
HUGEPAGES = "glibc.malloc.hugetlb=1"


def _in_process(*args: str, env: dict[str, str] | None = None) -> dict:
    return json_tail(run_command([sys.executable, __file__, *args], env=env))


def hugepage_ab(repeats: int = 5, sizes: tuple[int, ...] = (10_000, 1_000_000, 3_000_000)) -> dict:
    """The fixed-draw step with and without huge pages for the tables, interleaved.

    Each of ``repeats`` rounds measures every size twice in fresh processes, once with
    ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` and once without, the order alternating between
    rounds so that neither setting always runs second. ``ms_per_step`` is the median of the
    rounds; ``runs_ms`` all of them, in round order (the pairs line up).
    """
    import numpy as np

    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    envs = {"default": plain, "hugepages": {**plain, "GLIBC_TUNABLES": HUGEPAGES}}
    runs: dict[str, dict[int, list[float]]] = {name: {n: [] for n in sizes} for name in envs}
    for round_ in range(repeats):
        for items in sizes:
            order = list(envs) if round_ % 2 == 0 else list(envs)[::-1]
            for name in order:
                cost = _in_process("cost", str(items), "sampled", "fixed", env=envs[name])
                runs[name][items].append(cost["ms_per_step"])
    out = {}
    for name, by_size in runs.items():
        out[name] = [{"items": n, "ms_per_step": float(np.median(t)), "runs_ms": t}
                     for n, t in by_size.items()]  # fmt: skip
        base = out[name][0]["ms_per_step"]
        for row in out[name]:
            row["vs_smallest"] = round(row["ms_per_step"] / base - 1, 3)
    return {"setting": f"GLIBC_TUNABLES={HUGEPAGES}", "repeats": repeats, **out}


def step_costs(fixed_repeats: int = 5) -> dict:
    """Every step cost, each in a fresh process, and the profiles of ``PROFILED``.

    The fixed draw, which carries the claim that the catalogue's size does not set the cost, runs
    ``fixed_repeats`` times over ``FIXED_AXIS``, the sizes interleaved (one process's median moves
    by a fifth from run to run on a shared machine): ``ms_per_step`` is the median of the runs,
    ``runs_ms`` all of them. The other draws run once over ``ITEMS_AXIS``; full softmax only
    where it fits (1M x 1024 logits are 4 GB, three times that with gradients).
    """
    import numpy as np

    fixed: dict[int, list[dict]] = {items: [] for items in FIXED_AXIS}
    for _ in range(fixed_repeats):
        for items in FIXED_AXIS:
            fixed[items].append(_in_process("cost", str(items), "sampled", "fixed"))
    out = []
    for runs in fixed.values():
        times = [r["ms_per_step"] for r in runs]
        out.append({**runs[0], "ms_per_step": float(np.median(times)), "runs_ms": times})
    for draw in ("uniform", "popular"):
        out += [_in_process("cost", str(items), "sampled", draw) for items in ITEMS_AXIS]
    out += [_in_process("cost", str(items), "full", "uniform") for items in ITEMS_AXIS[:2]]
    profiles = [_in_process("profile", str(items)) for items in PROFILED]
    return {"step_cost": out, "profile": profiles}


# Realistic draws past 1M items, and a second fixed draw with as many distinct rows as the
# popularity-drawn batches have at 1M items: does the step follow the catalogue or the batch?
DRAWS_AXIS = (10_000, 100_000, 1_000_000, 3_000_000)
WIDE_SET = 40_000  # 1024 x 51 uniform draws from 40k items touch about 29k distinct rows


def draw_costs(repeats: int = 3) -> dict:
    """The step with popularity-drawn histories over ``DRAWS_AXIS``, and with the fixed draw
    from ``WIDE_SET`` items at the sizes above it, each in a fresh process, ``repeats`` rounds
    with the sizes interleaved; ``ms_per_step`` the median of the rounds, ``runs_ms`` all.

    The popularity-drawn batches' distinct rows grow with the catalogue (7,958 at 10k items,
    30,397 at 1M, 33,829 at 3M) but can never pass the batch's 1024 x 51 IDs; the wide fixed
    draw holds them at about 29k at every size. If the step's time follows the distinct rows
    and not the tables, the wide draw is flat and the popular one flattens with its rows.
    """
    import numpy as np

    plan = [("popular", n) for n in DRAWS_AXIS]
    plan += [(f"fixed:{WIDE_SET}", n) for n in DRAWS_AXIS if n > WIDE_SET]
    runs: dict[tuple[str, int], list[dict]] = {key: [] for key in plan}
    for _ in range(repeats):
        for draw, items in plan:
            runs[draw, items].append(_in_process("cost", str(items), "sampled", draw))
    out = []
    for rows in runs.values():
        times = [r["ms_per_step"] for r in rows]
        out.append({**rows[0], "ms_per_step": float(np.median(times)), "runs_ms": times})
    return {"repeats": repeats, "step_cost": out}


def pooled_growth(results: dict, seed: int = 0, draws: int = 20_000) -> dict:
    """The fixed-draw step's growth over the smallest catalogue, pooling every run in a
    ``scale.json``: part ``steps`` and the default arm of part ``hugepages``.

    For each size: the runs, their median, the median's change against the smallest size's, and
    a 90 % bootstrap interval of that change (both sizes' runs resampled with replacement).
    """
    import numpy as np

    runs: dict[int, list[float]] = collections.defaultdict(list)
    for row in results.get("steps", {}).get("step_cost", []):
        if row.get("histories") == "fixed" and row.get("softmax") == "sampled":
            runs[row["items"]] += row["runs_ms"]
    for row in results.get("hugepages", {}).get("default", []):
        runs[row["items"]] += row["runs_ms"]
    if not runs:
        raise ValueError("no fixed-draw step runs in these results (run --parts steps)")
    rng = np.random.default_rng(seed)
    smallest = np.asarray(runs[min(runs)])

    def resampled_median(times: np.ndarray) -> float:
        return float(np.median(rng.choice(times, len(times))))

    out = []
    for items in sorted(runs):
        times = np.asarray(runs[items])
        change = np.median(times) / np.median(smallest) - 1
        boot = [resampled_median(times) / resampled_median(smallest) - 1 for _ in range(draws)]
        interval = [round(float(x), 3) for x in np.percentile(boot, [5, 95])]
        out.append({
            "items": items, "runs": len(times), "median_ms": round(float(np.median(times)), 2),
            "change": round(float(change), 3), "change_90pct_interval": interval,
        })  # fmt: skip
    return {"baseline_items": min(runs), "sizes": out}


USAGE = (
    "usage: step_cost.py cost ITEMS SOFTMAX DRAW | profile ITEMS [DRAW] (one measurement per"
    " process)"
    " | dedup ITEMS [DRAW] (LazyAdam now and before, one process) | growth SCALE_JSON (pooled"
    " runs) | startup ITEMS (seconds to start training)"
)


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] in ("-h", "--help"):
        raise SystemExit(f"{USAGE}\n\n{__doc__}" if len(sys.argv) > 1 else USAGE)
    what, items, *rest = sys.argv[1:]
    if what == "growth":  # the argument is a results file, not a size
        results = json.loads(Path(items).read_text())
        print(json.dumps(pooled_growth(results), indent=1))
    elif what == "cost":
        print(json.dumps(step_cost(int(items), *rest)))
    elif what == "startup":
        print(json.dumps(startup_cost(int(items))))
    elif what == "profile":
        print(json.dumps(step_profile(int(items), *rest)))
    elif what == "dedup":
        print(json.dumps(dedup_ab(int(items), *rest)))
    else:
        raise SystemExit(f"{USAGE}, not {what}")


if __name__ == "__main__":
    main()
