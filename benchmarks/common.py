"""What every benchmark JSON records: the machine, the commit, wall times and peak memory."""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Run as `python benchmarks/x.py`, the script's folder comes first on the path, where
# `ranking.py` (this folder's benchmark) would hide the `ranking` package: the checkout goes first.
if sys.path[0] != str(ROOT):
    sys.path.insert(0, str(ROOT))


def machine() -> dict:
    """CPU model, core count, memory and library versions of this machine."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import numpy
    import tensorflow as tf

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "numpy": numpy.__version__,
    }


@functools.cache
def git_commit() -> str:
    """HEAD, with ``-dirty`` if tracked files differ from it. Read once per run: a benchmark that
    writes its JSON after each part would otherwise find its own first write and call itself
    dirty."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_results(name: str, payload: dict, path: str | Path | None = None) -> Path:
    """Write ``payload`` with machine, commit and date to ``benchmarks/results/<name>.json``."""
    path = Path(path) if path else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine(),
        **payload,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def run_command(command: list[str], **kw) -> str:
    """Run ``command`` from the checkout's root and return its stdout; a failure raises
    ``RuntimeError`` with the end of its stderr."""
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed:\n{done.stderr[-4000:]}")
    return done.stdout


def json_tail(text: str) -> dict:
    """The JSON object a command printed at the end of its output."""
    return json.loads(text[text.index("{") :])


def latency_ms(samples_s: list[float]) -> dict:
    """p50 / p99 / mean of per-call wall times (seconds in, milliseconds out)."""
    import numpy as np

    ms = np.asarray(samples_s) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "calls": len(ms),
    }


def _is_cached(config: Path, format_version: int, tower: dict, options: dict) -> bool:
    """Whether the artefact of ``config`` was trained in this format with this tower preset and
    these training options (verbosity and log directory aside)."""
    from towers.files import read_json

    if not config.exists():
        return False
    meta = read_json(config)
    ignore = ("verbose", "log_dir")
    trained = {k: v for k, v in meta.get("train_options", {}).items() if k not in ignore}
    wanted = {k: v for k, v in options.items() if k not in ignore}
    return (
        meta.get("format_version") == format_version
        and meta.get("tower") == tower
        and trained == wanted
    )


def serving_artefact(
    path: str | Path | None = None,
    data_dir: str | None = None,
    ranker: bool = False,
    seed: int = 0,
) -> Path:
    """The benchmark preset trained on all of ml-latest-small, with the new-user tower beside it
    (what ``nextwatch serve`` will serve), trained once and cached at
    ``artefacts/bench-ml-latest-small`` (trained again when
    the preset or its training options change; an artefact the caller names is used as it is,
    and only trained if it does not exist); with ``ranker``,
    also its rankers (the benchmark preset's and the new-user tower's), with the settings
    ``nextwatch serve`` trains them with
    (:func:`ranking.train.validated_settings`; a cached ranker trained with other settings is
    trained again). Another ``seed`` gives another
    model version (cached at ``artefacts/bench-ml-latest-small-seed<seed>``), for hot swaps."""
    from towers.artefact import FORMAT_VERSION, NEW_USER_DIR
    from towers.files import read_json
    from towers.pipeline import DataSource, train_candidates
    from towers.presets import benchmark_config, benchmark_options, new_user_config

    options = benchmark_options(verbose=0, seed=seed, dataset="ml-latest-small")
    preset = benchmark_config("ml-latest-small")
    second = new_user_config("ml-latest-small")
    own = path is not None and (Path(path) / "config.json").exists()
    if own:
        # The caller's own artefact is used as it is, never retrained over.
        path = Path(path)
        found = read_json(path / "config.json").get("format_version")
        if found != FORMAT_VERSION:
            raise ValueError(
                f"artefact {path} has format version {found}, this code reads {FORMAT_VERSION}: "
                "train it again with nextwatch train-candidates"
            )
    else:
        default = "bench-ml-latest-small" + (f"-seed{seed}" if seed else "")
        path = Path(path) if path else ROOT / "artefacts" / default
        config = path / "config.json"
        if not (
            _is_cached(config, FORMAT_VERSION, preset.to_dict(), asdict(options))
            and _is_cached(
                path / NEW_USER_DIR / "config.json", FORMAT_VERSION, second.to_dict(),
                asdict(options),
            )
        ):  # fmt: skip
            if path == ROOT / "artefacts" / default and config.exists():
                shutil.rmtree(path)  # the cache of another preset, ranker included
            train_candidates(
                DataSource("ml-latest-small", data_dir), path, preset, options, new_user=second
            )
    if ranker:
        from ranking.pipeline import train_ranker_for_artefact
        from ranking.train import validated_settings

        rank_config, rank_options = validated_settings("ml-latest-small")
        cached = path / "ranker"
        second = path / NEW_USER_DIR / "ranker"  # the new-user tower's own, since 2026-12-01
        # The caller's own artefact is used as it is when it has a ranker.
        found = (cached / "config.json").exists() and (own or (second / "config.json").exists())
        if (
            found
            and not own
            and not all(_ranker_is_current(d, rank_config, rank_options) for d in (cached, second))
        ):
            found = False  # trained with other settings, or by older code
        if not found and not own:
            for directory in (cached, second):
                shutil.rmtree(directory, ignore_errors=True)
        if not found:
            train_ranker_for_artefact(DataSource("ml-latest-small", data_dir), path,
                                      config=rank_config, options=rank_options)  # fmt: skip
    add_serving_arrays(path)
    return path


def _ranker_is_current(directory: Path, config, options) -> bool:
    """Whether the cached ranker in ``directory`` was trained with ``config`` and ``options``
    (verbosity aside)."""
    from ranking.artefact import ranker_settings

    saved_config, saved_options = ranker_settings(directory)
    return saved_config == config and replace(saved_options, verbose=options.verbose) == options


def add_serving_arrays(artefact: Path) -> None:
    """Give an artefact cached before ``serving.npz`` existed its serving arrays (tower and
    ranker), so that servers load it without Keras, as they load a freshly trained one."""
    from ranking import artefact as ranking_artefact
    from towers import artefact as towers_artefact

    if not (artefact / towers_artefact.SERVING_FILE).exists():
        towers_artefact.write_serving_arrays(artefact)
    ranker = artefact / "ranker"
    if (ranker / "config.json").exists() and not (ranker / towers_artefact.SERVING_FILE).exists():
        ranking_artefact.write_serving_arrays(ranker)
