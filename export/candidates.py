"""Batch candidate export: the top ``k`` items of every user (or of a user list), to files.

Output directory::

    _manifest.json         model version, k, user count, shard size, format, a hash of the user list
    part-00000.parquet     user_id, rank (1 = best), item_id, score, model_version
    part-00001.parquet     ...
    _SUCCESS               written last, with the run's users/s

Users are cut into shards of ``shard_size`` in a fixed order; each shard is written to a temporary
file and renamed into place, so a shard file exists only when it is complete. A rerun with the
same settings skips finished shards (resume); a rerun with other settings (another model, ``k``,
user list or format) is refused rather than mixing two exports in one directory. Shards run in
``workers`` processes, each loading the artefact once.

Retrieval is :class:`towers.retrieval.Retriever`, the same core as the Python API
(``serving.api.Recommender``), with the user's stored history as the query and seen items
excluded, so a user's rows equal ``Recommender.recommend(user_id, k=k, rank=False)``: the
export is the candidate stage (the ranker rescores at request time). Users not in the user table
get the answer for an empty history (as the API does for unknown users). Where the artefact has a
new-user tower (``new_user/``), users with at most ``towers.presets.NEW_USER_MAX_RATINGS`` known
items get its candidates, as they do from the API.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from export.rows import FORMATS, SCHEMA, candidate_table, load_generators
from serving.registry import write_atomic
from towers.artefact import artefact_version
from towers.catalogue import USERS_FILE, UserTable
from towers.leftovers import end_with_parent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportSummary:
    """What an export run did."""

    output: str
    model_version: str
    users: int
    shards: int
    shards_written: int
    shards_skipped: int
    unknown_users: int
    seconds: float
    users_per_second: float


class _ShardWriter:
    """Loads the artefact once per process and turns a shard of user rows into a file."""

    def __init__(self, artefact: str, user_table: str, batch_size: int) -> None:
        self.retriever, self.new_user = load_generators(artefact)
        self.users = UserTable.read(user_table)
        self.version = artefact_version(artefact)
        self.batch_size = batch_size

    def top_k(self, user_ids: list[str], k: int, exclude_seen: bool) -> pa.Table:
        tables = []
        for start in range(0, len(user_ids), self.batch_size):
            batch = user_ids[start : start + self.batch_size]
            rows = self.users.rows(batch)
            tables.append(
                candidate_table(
                    self.retriever, batch, self.users.histories(rows),
                    self.users.demographics(rows), k=k, exclude_seen=exclude_seen,
                    model_version=self.version, new_user=self.new_user,
                )
            )  # fmt: skip
        return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


_WRITER: _ShardWriter | None = None
_INIT_ERROR: str | None = None  # why this worker could not load the artefact


def _init_worker(artefact: str, user_table: str, batch_size: int) -> None:
    global _WRITER, _INIT_ERROR
    end_with_parent(os.getppid())  # a worker holds a whole model in memory
    try:
        _WRITER = _ShardWriter(artefact, user_table, batch_size)
    except Exception as exc:  # raised at the first shard: a failed initializer breaks the pool
        _INIT_ERROR = f"{artefact}: {type(exc).__name__}: {exc}"


def _write_shard(
    path: str, user_ids: list[str], k: int, exclude_seen: bool, fmt: str, writer=None
) -> tuple[str, int, float]:
    if writer is None and _INIT_ERROR is not None:
        raise OSError(f"a worker process could not load the model: {_INIT_ERROR}")
    writer = writer or _WRITER
    start = time.perf_counter()
    table = writer.top_k(user_ids, k, exclude_seen)
    # "_"-prefixed, so readers of the directory (pyarrow, Spark) skip an unfinished shard.
    tmp = str(Path(path).with_name(f"_tmp-{os.getpid()}-{Path(path).name}"))
    if fmt == "parquet":
        pq.write_table(table, tmp)
    else:
        pacsv.write_csv(table, tmp)
    os.replace(tmp, path)  # atomic: a shard file exists only when complete
    return path, len(user_ids), time.perf_counter() - start


def _users_hash(user_ids: list[str]) -> str:
    digest = hashlib.sha256()
    for user in user_ids:
        digest.update(user.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _read_manifest(path: Path) -> dict:
    """The settings of the export already in ``path.parent``.

    Raises
    ------
    ValueError
        If ``path`` is not a JSON object (damaged, or not written by this exporter).
    """
    remedy = (
        f"it is damaged or was not written by this exporter: delete {path.parent} to start the "
        "export over, or choose another output directory"
    )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"export manifest {path} is not valid JSON ({exc}); {remedy}") from exc
    if not isinstance(manifest, dict):
        raise ValueError(f"export manifest {path} is not a JSON object; {remedy}")
    return manifest


def export_candidates(
    artefact: str | Path,
    output: str | Path,
    *,
    k: int = 100,
    users: list[str] | None = None,
    user_table: str | Path | None = None,
    shard_size: int = 10_000,
    workers: int = 1,
    fmt: str = "parquet",
    batch_size: int = 1024,
    exclude_seen: bool = True,
) -> ExportSummary:
    """Write the top ``k`` candidates of each user as sharded files.

    Parameters
    ----------
    artefact : str or Path
        Artefact directory (from ``nextwatch train-candidates``).
    output : str or Path
        Output directory (created; resumed if it holds a matching unfinished export).
    k : int
        Candidates per user.
    users : list of str, optional
        Export only these users (in this order); default every user of the user table.
    user_table : str or Path, optional
        Parquet user table (``user_id``, ``history``, optional demographics; see
        :mod:`towers.catalogue`); default the artefact's ``users.parquet``.
    shard_size : int
        Users per output file.
    workers : int
        Processes; each loads the artefact and handles whole shards.
    fmt : {"parquet", "csv"}
    batch_size : int
        Users per encoder pass and index search.
    exclude_seen : bool
        Leave out items in each user's history (default True).

    Raises
    ------
    ValueError
        On a bad argument, if ``output`` holds an export made with other settings, or if its
        ``_manifest.json`` is damaged.
    FileNotFoundError
        If the artefact or user table is missing.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    for name, value in (
        ("k", k), ("shard_size", shard_size), ("workers", workers), ("batch_size", batch_size)
    ):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    artefact = Path(artefact)
    table_path = Path(user_table) if user_table else artefact / USERS_FILE
    if not table_path.exists():
        raise FileNotFoundError(
            f"user table {table_path} does not exist (train with the current version, or pass "
            "user_table)"
        )
    version = artefact_version(artefact)
    table = UserTable.read(table_path)
    if isinstance(users, str | bytes):
        raise ValueError(f"users must be a list of user IDs, not one string ({users!r})")
    user_ids = list(dict.fromkeys(str(u) for u in users)) if users is not None else table.user_ids
    if not user_ids:
        raise ValueError("users is empty: there is nobody to export candidates for")
    unknown = int((table.rows(user_ids) < 0).sum()) if users is not None else 0
    if unknown:
        log.warning("%d of %d users are not in the user table: exported as new users", unknown,
                    len(user_ids))  # fmt: skip
    del table
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    shards = [user_ids[i : i + shard_size] for i in range(0, len(user_ids), shard_size)]
    manifest = {
        "model_version": version,
        "k": k,
        "users": len(user_ids),
        "users_sha256": _users_hash(user_ids),
        "shard_size": shard_size,
        "shards": len(shards),
        "format": fmt,
        "exclude_seen": exclude_seen,
        "user_table": str(table_path.resolve()),
        # Changed histories must not be mixed with shards made from the old ones.
        "user_table_bytes": table_path.stat().st_size,
        "user_table_mtime_ns": table_path.stat().st_mtime_ns,
    }
    manifest_path = output / "_manifest.json"
    if manifest_path.exists():
        previous = _read_manifest(manifest_path)
        changed = {key for key in manifest if previous.get(key) != manifest[key]}
        if changed:
            raise ValueError(
                f"{output} holds an export with other settings ({sorted(changed)} differ); "
                "use a new output directory"
            )
    else:
        # Part files without a manifest are not this command's: they would pass as finished.
        foreign = sorted(output.glob("part-*"))
        if foreign:
            raise ValueError(
                f"{output} holds {foreign[0].name} but no _manifest.json, so it is not an "
                "export this command can resume; use a new or empty output directory"
            )
        write_atomic(manifest_path, json.dumps(manifest, indent=2))
    (output / "_SUCCESS").unlink(missing_ok=True)
    for leftover in output.glob("_tmp-*"):  # shards a crashed run did not finish
        leftover.unlink()
    paths = [str(output / f"part-{i:05d}.{fmt}") for i in range(len(shards))]
    todo = [i for i, p in enumerate(paths) if not Path(p).exists()]
    skipped = len(shards) - len(todo)
    if skipped:
        log.info("resuming: %d of %d shards already written", skipped, len(shards))
    start = time.perf_counter()
    done_users = 0

    def progress(n_users: int, finished: int) -> None:
        elapsed = time.perf_counter() - start
        rate = n_users / max(elapsed, 1e-9)
        remaining = sum(len(shards[i]) for i in todo) - n_users
        log.info("shard %d/%d done: %d users, %.0f users/s, ETA %.0f s", finished + skipped,
                 len(shards), n_users, rate, remaining / max(rate, 1e-9))  # fmt: skip

    if workers == 1 or len(todo) <= 1:
        writer = _ShardWriter(str(artefact), str(table_path), batch_size) if todo else None
        for n, i in enumerate(todo, 1):
            _, count, _ = _write_shard(paths[i], shards[i], k, exclude_seen, fmt, writer)
            done_users += count
            progress(done_users, n)
    else:
        with ProcessPoolExecutor(
            workers,
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(str(artefact), str(table_path), batch_size),
        ) as pool:
            futures = [
                pool.submit(_write_shard, paths[i], shards[i], k, exclude_seen, fmt) for i in todo
            ]
            for n, future in enumerate(as_completed(futures), 1):
                _, count, _ = future.result()
                done_users += count
                progress(done_users, n)
    seconds = time.perf_counter() - start
    summary = ExportSummary(
        output=str(output),
        model_version=version,
        users=len(user_ids),
        shards=len(shards),
        shards_written=len(todo),
        shards_skipped=skipped,
        unknown_users=unknown,
        seconds=round(seconds, 3),
        users_per_second=round(done_users / seconds, 1) if seconds > 0 else 0.0,
    )
    write_atomic(output / "_SUCCESS", json.dumps(asdict(summary), indent=2))
    return summary
