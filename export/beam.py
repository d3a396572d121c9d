"""Batch candidate export as an Apache Beam pipeline: the rows of :mod:`export.candidates`, on any
Beam runner (DirectRunner here; Dataflow, Flink or Spark with other pipeline options).

Pipeline::

    ReadFromParquet(users)         one dict per user: user_id, history, [age, gender, ...]
    | BatchElements(batch_size)    lists of batch_size users
    | Reshuffle                    spreads the batches over workers (a Parquet row group is read
                                   by one worker, and a user table is often one row group)
    | ParDo(_TopK)                 setup(): load the Retriever once per worker;
                                   process(): one encoder pass and one ScaNN search per batch
    | WriteToParquetBatched        output/part-SSSSS-of-NNNNN.parquet (export.rows.SCHEMA)

then ``output/_manifest.json`` (model version, k, users, runner, seconds, users/s). A second
branch counts each user ID (``Count.PerElement``): user IDs must be unique, as the single-process
exporter requires, and a table that repeats one (within a shard or across shards) fails the run
with the IDs named, and its part files are removed, since they hold some users twice.

Each user's rows are computed by :func:`export.rows.candidate_table`, as in the
single-process exporter, from the history and demographics that the user's row of ``users``
holds: an empty or null history, or one of items the model does not know, gets the answer for a
new user. The artefact, the users and the output may be on any filesystem Beam knows (local,
``gs://``, ``s3://``, ``hdfs://``); a remote artefact is copied to a local folder once per worker.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from export.rows import SCHEMA, candidate_table, load_generators
from towers.catalogue import UserTable, check_history_type
from towers.features import DEMOGRAPHIC_COLUMNS
from towers.retrieval import Retriever

log = logging.getLogger(__name__)
# Two local worker processes: one per core of the reference machine. Used unless the caller
# names a runner.
DIRECT_ARGS = ("--runner=DirectRunner", "--direct_num_workers=2",
               "--direct_running_mode=multi_processing")  # fmt: skip
_DEMOGRAPHICS = ("age", *DEMOGRAPHIC_COLUMNS)
REPEATS = "_repeated_user_ids"  # the repeat check's output: a JSON list of up to 3 IDs


@dataclass(frozen=True)
class BeamExportSummary:
    """What a Beam export run did (also written to ``output/_manifest.json``)."""

    output: str
    engine: str
    runner: str
    model_version: str
    k: int
    exclude_seen: bool
    users: int | None  # None where the runner reports no metrics
    shards: int
    seconds: float
    users_per_second: float | None


def _local_artefact(artefact: str) -> str:
    """``artefact`` itself if it is a local folder, else a local copy of it (``gs://`` etc.)."""
    if FileSystems.get_scheme(artefact) in (None, "file"):
        return artefact
    prefix = artefact.rstrip("/") + "/"
    local = Path(tempfile.mkdtemp(prefix="nextwatch-artefact-"))
    for meta in FileSystems.match([prefix + "**"])[0].metadata_list:
        target = local / meta.path[len(prefix) :]
        target.parent.mkdir(parents=True, exist_ok=True)
        # UNCOMPRESSED: copy bytes as stored, whatever the file name ends in.
        with FileSystems.open(meta.path, compression_type="uncompressed") as src:
            with target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    return str(local)


class _TopK(beam.DoFn):
    """A batch of user rows -> one :data:`export.rows.SCHEMA` table of their top ``k``."""

    def __init__(self, artefact: str, schema: pa.Schema, k: int, exclude_seen: bool,
                 version: str) -> None:  # fmt: skip
        self.artefact = artefact
        self.schema = schema
        self.k = k
        self.exclude_seen = exclude_seen
        self.version = version
        self.users = Metrics.counter("nextwatch", "users")
        self.retriever: Retriever | None = None
        self.new_user: Retriever | None = None
        self.local: str | None = None

    def setup(self) -> None:
        # Once per worker (DoFn instance), not per bundle: loading TF and the index takes seconds.
        self.local = _local_artefact(self.artefact)
        self.retriever, self.new_user = load_generators(self.local)

    def teardown(self) -> None:
        if self.local is not None and self.local != self.artefact:  # our copy of a remote one
            shutil.rmtree(self.local, ignore_errors=True)

    def process(self, batch):  # untyped: Beam would type-check BatchElements' output against it
        # A repeated user ID fails the run after it (the "Count ids" branch names it); within a
        # batch its first row stands in meanwhile, as UserTable refuses repeats.
        firsts = {row["user_id"]: row for row in reversed(batch)}
        if len(firsts) < len(batch):
            batch = list(reversed(firsts.values()))
        users = UserTable(pa.Table.from_pylist(batch, schema=self.schema))
        rows = np.arange(len(users))
        self.users.inc(len(users))
        yield candidate_table(
            self.retriever, users.user_ids, users.histories(rows), users.demographics(rows),
            k=self.k, exclude_seen=self.exclude_seen, model_version=self.version,
            new_user=self.new_user,
        )  # fmt: skip


class _Repeated(beam.DoFn):
    """``(user_id, count)`` with count > 1 -> the ID, counted in ``repeated_user_ids``."""

    def __init__(self) -> None:
        self.repeated = Metrics.counter("nextwatch", "repeated_user_ids")

    def process(self, pair):
        user_id, count = pair
        if count > 1:
            self.repeated.inc()
            yield str(user_id)


def _counter(result, name: str) -> int | None:
    counters = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    if not counters:
        return None
    return int(sum((c.committed if c.committed is not None else c.attempted) for c in counters))


def _refuse_repeats(output: str, users: str, repeated: int) -> None:
    """Remove the run's part files and raise, naming up to three repeated IDs."""
    examples: list[str] = []
    found = FileSystems.match([FileSystems.join(output, REPEATS + "*")])[0].metadata_list
    for meta in found:
        with FileSystems.open(meta.path, compression_type="uncompressed") as f:
            examples += json.loads(f.read() or b"[]")
    parts = FileSystems.match([FileSystems.join(output, "part-*")])[0].metadata_list
    if parts or found:
        FileSystems.delete([m.path for m in (*parts, *found)])
    raise ValueError(
        f"users {users} repeats user ids ({repeated} repeated, e.g. {sorted(examples)!r}); "
        "each user must appear once: no candidates were kept"
    )


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _model_version(artefact: str) -> str:
    # towers.artefact.artefact_version reads through pathlib, which cannot open gs:// URLs.
    config = FileSystems.join(artefact, "config.json")
    if not FileSystems.exists(config):
        raise FileNotFoundError(f"artefact {artefact} is not a nextwatch artefact (no config.json)")
    with FileSystems.open(config) as f:
        version = json.load(f).get("version")
    if not version:
        raise ValueError(f"artefact {artefact} has no version (an older artefact format)")
    return str(version)


def _users_schema(users: str) -> pa.Schema:
    """The columns of ``users`` that the export reads, checked in every file (their footers
    only) before the job starts: each must have them, of the same types."""
    files = FileSystems.match([users])[0].metadata_list
    if not files:
        raise FileNotFoundError(f"users {users!r} matches no file")
    first: pa.Schema | None = None
    for meta in files:
        with FileSystems.open(meta.path, compression_type="uncompressed") as f:
            footer = pq.ParquetFile(f).metadata
        schema = footer.schema.to_arrow_schema()
        missing = sorted({"user_id", "history"} - set(schema.names))
        if missing:
            raise ValueError(f"users file {meta.path} lacks columns {missing}")
        nulls = _null_count(footer, schema.get_field_index("user_id"))
        if nulls:
            raise ValueError(f"users file {meta.path} has {nulls} null user_id(s): every row "
                             "needs a user ID")  # fmt: skip
        try:  # checked here, before the job starts, as the single-process exporter does
            check_history_type(schema.field("history").type)
        except ValueError as exc:
            raise ValueError(f"{meta.path}: {exc}") from None
        demographics = all(c in schema.names for c in _DEMOGRAPHICS)
        names = ["user_id", "history", *(_DEMOGRAPHICS if demographics else ())]
        read = pa.schema([schema.field(name).with_nullable(True) for name in names])
        if first is None:
            first, first_path = read, meta.path
        elif not read.equals(first, check_metadata=False):
            raise ValueError(
                f"users files disagree: {first_path} has columns {first.to_string()!r}, "
                f"{meta.path} has {read.to_string()!r}; every shard needs the same columns "
                "and types"
            )
    assert first is not None
    return first


def _null_count(footer: pq.FileMetaData, column: int) -> int:
    """Nulls in a top-level column, from the row groups' statistics (0 where none were written:
    the job then finds them, as a failed step)."""
    count = 0
    for group in range(footer.num_row_groups):
        stats = footer.row_group(group).column(column).statistics
        if stats is not None and stats.has_null_count:
            count += stats.null_count
    return count


def _leftovers(output: str) -> list[str]:
    """Temporary files of a Beam write into ``output`` that never finished, and their folders
    (a pattern matches files only)."""
    files = FileSystems.match([FileSystems.join(output, "beam-temp-*/*")])[0].metadata_list
    return sorted({p for m in files for p in (m.path, FileSystems.split(m.path)[0])})


def _remove(paths: list[str]) -> None:
    # Deepest first, so a folder is empty (or gone) when it is deleted.
    for path in sorted(paths, key=len, reverse=True):
        if FileSystems.exists(path):
            FileSystems.delete([path])


def _pipeline_options(pipeline_args: list[str] | None) -> PipelineOptions:
    args = list(pipeline_args or [])
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args = [*DIRECT_ARGS, *args]  # the caller's own --direct_* flags come later and win
    return PipelineOptions(args)


def beam_export(
    artefact: str | Path,
    users: str | Path,
    output: str | Path,
    *,
    k: int = 100,
    exclude_seen: bool = True,
    batch_size: int = 1024,
    pipeline_args: list[str] | None = None,
) -> BeamExportSummary:
    """Write the top ``k`` candidates of every user of a Parquet user table with Apache Beam.

    Parameters
    ----------
    artefact : str or Path
        Artefact directory (from ``nextwatch train-candidates``), readable by every worker: a
        shared filesystem or an object store such as ``gs://bucket/artefacts/candidates``.
    users : str or Path
        A Parquet user table or a glob of shards (``users/part-*.parquet``): ``user_id``,
        ``history`` (list of str, oldest first) and, optionally, all of ``age``, ``gender``,
        ``occupation``, ``zip_prefix`` (see :mod:`towers.catalogue`). User IDs must be unique.
    output : str or Path
        Output directory: ``part-SSSSS-of-NNNNN.parquet`` shards and ``_manifest.json``.
    k : int
        Candidates per user.
    exclude_seen : bool
        Leave out items in each user's history (default True).
    batch_size : int
        Users per encoder pass and index search.
    pipeline_args : list of str, optional
        Beam pipeline options, e.g. ``["--runner=DataflowRunner", "--project=p", ...]``.
        Without ``--runner``: the DirectRunner with two worker processes (:data:`DIRECT_ARGS`).

    Returns
    -------
    BeamExportSummary

    Raises
    ------
    ValueError
        If ``k`` or ``batch_size`` is not a positive integer, ``users`` lacks a column or
        repeats a user ID (the run's part files are then removed), or ``output`` already holds
        part files.
    FileNotFoundError
        If ``artefact`` is not an artefact or ``users`` matches no file.
    """
    _positive("k", k)
    _positive("batch_size", batch_size)
    artefact, users, output = str(artefact), str(users), str(output)
    version = _model_version(artefact)
    schema = _users_schema(users)
    if FileSystems.match([FileSystems.join(output, "part-*")])[0].metadata_list:
        raise ValueError(f"output {output} already holds part-* files: use a new directory")
    stale = _leftovers(output)
    if stale:  # no part file yet: an earlier run of this export stopped before it finished
        log.warning("removing %d temporary file(s) of an unfinished run from %s", len(stale),
                    output)  # fmt: skip
        _remove(stale)
    options = _pipeline_options(pipeline_args)
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    start = time.perf_counter()
    pipeline = beam.Pipeline(options=options)
    rows = pipeline | "Read users" >> beam.io.ReadFromParquet(users, columns=schema.names)
    _ = (
        rows
        | "Batch" >> beam.BatchElements(min_batch_size=batch_size, max_batch_size=batch_size)
        | "Spread" >> beam.Reshuffle()
        | "Top k" >> beam.ParDo(_TopK(artefact, schema, k, exclude_seen, version))
        | "Write" >> beam.io.WriteToParquetBatched(
            FileSystems.join(output, "part"), schema=SCHEMA, codec="snappy",
            file_name_suffix=".parquet",
        )
    )  # fmt: skip
    _ = (
        rows
        | "User ids" >> beam.Map(lambda row: row["user_id"])
        | "Count ids" >> beam.combiners.Count.PerElement()
        | "Repeated" >> beam.ParDo(_Repeated())
        | "Examples" >> beam.combiners.Top.Smallest(3)
        | "As JSON" >> beam.Map(json.dumps)
        | "Write repeats"
        >> beam.io.WriteToText(FileSystems.join(output, REPEATS), shard_name_template="")
    )
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except BaseException:
        _remove(_leftovers(output))  # readers of the folder would take them for output
        raise
    seconds = time.perf_counter() - start
    repeated = _counter(result, "repeated_user_ids")
    if repeated:
        _refuse_repeats(output, users, repeated)
    leftovers = FileSystems.match([FileSystems.join(output, REPEATS + "*")])[0].metadata_list
    if leftovers:
        FileSystems.delete([m.path for m in leftovers])
    done = _counter(result, "users")
    shards = len(FileSystems.match([FileSystems.join(output, "part-*")])[0].metadata_list)
    summary = BeamExportSummary(
        output=output, engine="beam", runner=str(runner), model_version=version, k=k,
        exclude_seen=exclude_seen, users=done, shards=shards, seconds=round(seconds, 3),
        users_per_second=round(done / seconds, 1) if done is not None and seconds > 0 else None,
    )  # fmt: skip
    with FileSystems.create(FileSystems.join(output, "_manifest.json")) as f:
        f.write(json.dumps({**asdict(summary), "users_path": users}, indent=2).encode())
    log.info("beam export: %s users in %.1f s (%s users/s) on %s", done, seconds,
             summary.users_per_second, runner)  # fmt: skip
    return summary
