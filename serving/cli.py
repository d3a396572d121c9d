"""The ``nextwatch`` command line.

``nextwatch train-candidates``   train the next-watch tower and save an artefact directory
                                 (``--shards``: streaming, and multi-worker under TF_CONFIG)
``nextwatch generate-synthetic`` a synthetic log of any size, as Parquet shards
``nextwatch evaluate``           evaluate an artefact on the protocol it was trained for
``nextwatch train-ranker``       train the ranking network for a tower artefact
``nextwatch recommend``          top-k for a user or a history, from an artefact (JSON)
``nextwatch export-candidates``  batch top-k for all users (or a list), sharded and resumable
``nextwatch export-savedmodels`` SavedModels for TF Serving (query tower, brute force, ScaNN)
``nextwatch serve``              the live HTTP service (trains a first model if there is none)
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from export.candidates import FORMATS, export_candidates
from export.savedmodel import MODEL_NAMES, export_savedmodels
from ranking.model import RankerConfig
from ranking.pipeline import train_ranker_for_artefact
from ranking.train import RankerOptions, ranker_impressions, ranker_settings
from serving.api import Recommender, UnknownItemError
from towers._tf import tf
from towers.artefact import check_output, replace_directory
from towers.data import DataError
from towers.leftovers import remove_dead, work_dir
from towers.model import TowerConfig
from towers.movielens import ARCHIVES, DATA_ENV
from towers.pipeline import DataSource, evaluate_artefact, retrain_candidates, train_candidates
from towers.presets import benchmark_config, benchmark_options, warm_start_options
from towers.splits import SPLITS
from towers.synthetic import ITEMS_FILE, SyntheticConfig, generate, shard_paths
from towers.train import TrainOptions
from towers.warmstart import WarmStart

if TYPE_CHECKING:
    from export.beam import BeamExportSummary

log = logging.getLogger("nextwatch")
ENGINES = ("local", "beam")


def _add_source(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        choices=sorted(ARCHIVES),
        default="ml-latest-small",
        help="MovieLens dataset (default: %(default)s)",
    )
    group.add_argument(
        "--data-dir",
        help=f"folder holding the dataset (default: ${DATA_ENV}, "
        "else ~/.cache/nextwatch/data; downloaded and checksum-verified if absent)",
    )
    group.add_argument("--interactions", help="your own CSV/Parquet log instead of MovieLens")
    group.add_argument("--items", help="item metadata file (item_id, title, year, genres, tags)")
    group.add_argument("--users", help="user metadata file (user_id, age, gender, ...)")
    group.add_argument("--user-col", default="user")
    group.add_argument("--item-col", default="item")
    group.add_argument("--rating-col", default="rating")
    group.add_argument("--timestamp-col", default="timestamp")


def _source(args: argparse.Namespace) -> DataSource:
    return DataSource(
        dataset=None if args.interactions else args.dataset, data_dir=args.data_dir,
        interactions=args.interactions, items=args.items, users=args.users,
        user_col=args.user_col, item_col=args.item_col, rating_col=args.rating_col,
        timestamp_col=args.timestamp_col,
    )  # fmt: skip


def _add_dataclass_flags(
    parser: argparse.ArgumentParser, defaults: object, title: str, skip: Sequence[str] = ()
) -> None:
    """One flag per init field of the dataclass instance ``defaults``, defaulting to its values."""
    group = parser.add_argument_group(title)
    for f in fields(defaults):
        if not f.init or f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif f.name == "max_examples_per_user":
            group.add_argument(
                flag,
                type=lambda v: None if v == "none" else int(v),
                default=default,
                help="int, or 'none' for no cap (default: %(default)s)",
            )
        else:
            kind = type(default) if default is not None else str
            group.add_argument(flag, type=kind, default=default, help="(default: %(default)s)")


def _build(cls: type, args: argparse.Namespace):
    return cls(
        **{f.name: getattr(args, f.name) for f in fields(cls) if f.init and hasattr(args, f.name)}
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nextwatch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # dest "debug": the training commands' own --verbose (Keras progress) must not override it.
    parser.add_argument("-v", "--verbose", dest="debug", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train-candidates", help="train the candidate-generation tower")
    _add_source(train)
    train.add_argument(
        "--output",
        default="artefacts/candidates",
        help="artefact directory to write (default: %(default)s)",
    )
    train.add_argument(
        "--protocol",
        choices=["none", *SPLITS[:3], SPLITS[4]],
        default="none",
        help="train on this protocol's train split and evaluate on its test split; "
        "'none' trains on all data (default)",
    )
    # The defaults are the benchmark preset, so the README's numbers are what a plain run gets.
    _add_dataclass_flags(train, benchmark_config(), "model (defaults: the benchmark preset)")
    _add_dataclass_flags(train, benchmark_options(), "training", skip=("log_dir",))
    train.add_argument("--log-dir", help="TensorBoard logs (default: OUTPUT/logs)")
    scale = train.add_argument_group(
        "streaming and multi-worker (with --shards; TF_CONFIG selects MultiWorkerMirroredStrategy)"
    )
    scale.add_argument(
        "--shards", help="train streaming from this folder of Parquet shards (whole users per "
        "shard; e.g. a `nextwatch generate-synthetic` world) instead of --dataset/--interactions"
    )  # fmt: skip
    scale.add_argument("--steps-per-epoch", type=int, help="(default: one pass over the shards)")
    scale.add_argument("--shuffle-buffer", type=int, default=50_000, help="(default: %(default)s)")
    scale.add_argument("--backup-dir", help="BackupAndRestore checkpoints: rerun to resume")
    scale.add_argument(
        "--backup-every", type=int, help="back up every N steps (default: each epoch)"
    )

    synth = sub.add_parser("generate-synthetic", help="write a synthetic log as Parquet shards")
    synth.add_argument("--output", required=True, help="folder to write (must not hold a world)")
    _add_dataclass_flags(synth, SyntheticConfig(), "world")

    retrain = sub.add_parser(
        "retrain", help="warm-start a trained tower on new events (and retrain its ranker)"
    )
    _add_source(retrain)
    where = retrain.add_mutually_exclusive_group(required=True)
    where.add_argument("--from", dest="parent", help="the parent artefact (with --output)")
    where.add_argument(
        "--home", help="a service home: warm-start its serving version on its event store, "
        "publish, promote behind the guard, and point its workers at it",
    )  # fmt: skip
    retrain.add_argument("--output", help="artefact directory to write (with --from)")
    retrain.add_argument(
        "--store", help="with --home: the event store URL (default: HOME/events.db)"
    )
    retrain.add_argument(
        "--tolerance", type=float, default=None,
        help="with --home: largest relative regression a candidate may show (default: 0.02)",
    )  # fmt: skip
    retrain.add_argument(
        "--holdout-fraction", type=float, default=None,
        help="with --home: the recent share of events held out to compare on (default: 0.05)",
    )  # fmt: skip
    retrain.add_argument(
        "--since", type=int, help="events at or after this epoch second are new "
        "(default: after the parent's last training event)",
    )  # fmt: skip
    retrain.add_argument(
        "--replay-fraction", type=float, default=0.1,
        help="share of older examples replayed (default: %(default)s)",
    )  # fmt: skip
    retrain.add_argument(
        "--no-ranker", action="store_true", help="do not retrain the parent's ranker"
    )
    _add_dataclass_flags(retrain, warm_start_options(), "training", skip=("log_dir",))

    rollback = sub.add_parser("rollback", help="serve the previously promoted version again")
    rollback.add_argument("--home", help="the service home (default: $NEXTWATCH_HOME, else "
                          "~/.local/share/nextwatch)")  # fmt: skip

    evaluate = sub.add_parser("evaluate", help="evaluate a trained tower on a protocol")
    _add_source(evaluate)
    evaluate.add_argument("--artefact", required=True, help="artefact directory")
    evaluate.add_argument(
        "--protocol", choices=[*SPLITS[:3], SPLITS[4]], default="temporal-user-20"
    )
    evaluate.add_argument("--output", help="write the metrics JSON here too")
    evaluate.add_argument(
        "--force",
        action="store_true",
        help="evaluate even if the artefact was trained for other data",
    )

    rank = sub.add_parser("train-ranker", help="train the ranking network for a tower artefact")
    _add_source(rank)
    rank.add_argument("--artefact", default="artefacts/candidates", help="tower artefact")
    rank.add_argument("--output", help="ranker directory (default: ARTEFACT/ranker, which the "
                      "Python API and the service load)")  # fmt: skip
    rank.add_argument("--num-candidates", type=int, default=100, help="items per impression")
    rank.add_argument("--events-per-user", type=int, default=20, help="impressions per user")
    _add_dataclass_flags(
        rank, RankerConfig(), "ranker model", skip=("hidden_units", "rating_units")
    )
    _add_dataclass_flags(rank, RankerOptions(), "ranker training")

    rec = sub.add_parser("recommend", help="top-k for a known user or a history (JSON)")
    rec.add_argument("--artefact", default="artefacts/candidates", help="artefact directory")
    who = rec.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user ID of the training data")
    who.add_argument("--history", help="comma-separated watched item IDs, oldest first")
    who.add_argument("--similar-to", help="an item ID: its most similar items")
    rec.add_argument("--k", type=int, default=10)
    rec.add_argument("--genres", default="", help="comma-separated genre filter")
    rec.add_argument("--exclude", default="", help="comma-separated item IDs to leave out")
    rec.add_argument("--no-rank", action="store_true", help="the generator's order, unranked")

    cands = sub.add_parser("export-candidates", help="batch top-k candidates for every user")
    cands.add_argument("--artefact", default="artefacts/candidates", help="artefact directory")
    cands.add_argument("--output", required=True, help="output directory (resumed if unfinished)")
    cands.add_argument("--k", type=int, default=100, help="candidates per user (default: 100)")
    cands.add_argument(
        "--users", help="only these users: a text file with one ID per line, or CSV/Parquet "
        "with a user_id column"
    )  # fmt: skip
    cands.add_argument(
        "--user-table",
        help="Parquet user table (user_id, history, demographics) instead of the artefact's",
    )
    cands.add_argument("--shard-size", type=int, default=10_000, help="users per output file")
    cands.add_argument("--workers", type=int, default=1, help="parallel processes")
    cands.add_argument("--format", choices=FORMATS, default="parquet")
    cands.add_argument("--batch-size", type=int, default=1024)
    cands.add_argument(
        "--include-seen", action="store_true", help="do not exclude items the user has watched"
    )
    cands.add_argument(
        "--engine", choices=ENGINES, default="local",
        help="local: this machine's processes (--workers, --shard-size, resumable); beam: an "
        "Apache Beam pipeline over the user table (a Parquet file or glob), on the DirectRunner "
        "or, with pipeline options after --, Dataflow, Flink or Spark (docs/beam.md)",
    )  # fmt: skip
    cands.add_argument(
        "beam_args", nargs="*", metavar="-- BEAM_OPTION",
        help="Beam pipeline options, e.g. -- --runner=DataflowRunner --project=P (--engine beam)",
    )  # fmt: skip

    models = sub.add_parser("export-savedmodels", help="SavedModels for TF Serving")
    models.add_argument("--artefact", default="artefacts/candidates", help="artefact directory")
    models.add_argument("--output", required=True, help="TF Serving model base directory")
    models.add_argument("--k", type=int, default=100, help="items per retrieval response")
    models.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    models.add_argument("--serving-version", type=int, default=1, help="numeric version dir")
    models.add_argument(
        "--overwrite", action="store_true",
        help="replace the version directories if they exist (default: refuse)",
    )  # fmt: skip

    serve = sub.add_parser("serve", help="the live HTTP service (trains a model on first run)")
    _add_source(serve)
    serve.add_argument("--home", help="models, event store and API key (default: $NEXTWATCH_HOME, "
                       "else ~/.local/share/nextwatch)")  # fmt: skip
    serve.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    serve.add_argument(
        "--workers", type=int, default=1, help="server processes sharing the port (default: 1)"
    )
    serve.add_argument(
        "--store",
        help="event store URL: sqlite:///PATH or postgresql://... (default: HOME/events.db)",
    )
    serve.add_argument("--artefact", help="serve this artefact instead of the registry's current")
    serve.add_argument(
        "--no-seed", action="store_true", help="do not seed an empty store with the dataset"
    )
    serve.add_argument(
        "--retrain-every-events", type=int,
        help="warm-start a new version in a separate process after this many new events",
    )  # fmt: skip
    serve.add_argument(
        "--retrain-every-seconds", type=float, help="... or at this interval (seconds)"
    )
    serve.add_argument(
        "--history-cache-users", type=int, default=10_000,
        help="users whose folded histories each process keeps; 0 reads every history whole "
        "(default: %(default)s)",
    )  # fmt: skip
    serve.add_argument("--rating-min", type=float, default=0.5, help="(default: %(default)s)")
    serve.add_argument("--rating-max", type=float, default=5.0, help="(default: %(default)s)")
    return parser


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def read_user_list(path: str) -> list[str]:
    """User IDs from a text file (one per line) or a CSV/Parquet file with a ``user_id`` column.

    IDs are stripped of surrounding whitespace; a text file's blank lines are skipped.

    Raises
    ------
    FileNotFoundError, ValueError
        If the file is missing, a table lacks ``user_id``, or a table row's ``user_id`` is
        empty (the message names the file and the row, counting data rows from 1).
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"users file {file} does not exist")
    if file.suffix.lower() in (".csv", ".parquet"):
        frame = pd.read_parquet(file) if file.suffix.lower() == ".parquet" else pd.read_csv(
            file, dtype=str, keep_default_na=False  # an empty cell is "", not the user "nan"
        )  # fmt: skip
        if "user_id" not in frame.columns:
            raise ValueError(f"{file} has no user_id column (columns: {list(frame.columns)})")
        column = frame["user_id"]
        ids = [
            "" if null else str(u).strip() for u, null in zip(column, column.isna(), strict=True)
        ]
        empty = [row for row, user in enumerate(ids, 1) if not user]
        if empty:
            raise ValueError(
                f"users file {file} has an empty user_id in data row {empty[0]} "
                f"({len(empty)} empty in all); every row needs a user ID"
            )
        return ids
    return [line.strip() for line in file.read_text().splitlines() if line.strip()]


def _recommend(args: argparse.Namespace) -> dict:
    recommender = Recommender.load(args.artefact)
    if args.similar_to:
        items = recommender.similar_items(args.similar_to, args.k)
        return {"item_id": args.similar_to, "items": [asdict(i) for i in items]}
    result = recommender.recommend(
        args.user,
        history=_split(args.history) if args.history is not None else None,
        k=args.k,
        genres=_split(args.genres),
        exclude=_split(args.exclude),
        rank=not args.no_rank,
    )
    out = asdict(result)
    out["model_version"] = recommender.version
    return out


def _beam_export(args: argparse.Namespace) -> BeamExportSummary:
    """``export-candidates --engine beam``: the user table's users, through a Beam pipeline."""
    from export.beam import beam_export  # Beam loads only for this engine

    if args.users:
        raise ValueError("--users does not apply to --engine beam: pass the users' rows as "
                         "--user-table")  # fmt: skip
    if args.format != "parquet":
        raise ValueError(f"--engine beam writes Parquet only, not --format {args.format}")
    return beam_export(
        # str, not Path: the artefact may be a gs:// (or other Beam filesystem) URL
        args.artefact, args.user_table or args.artefact.rstrip("/") + "/users.parquet", args.output,
        k=args.k, exclude_seen=not args.include_seen, batch_size=args.batch_size,
        pipeline_args=args.beam_args or None,
    )  # fmt: skip


def _train_shards(args: argparse.Namespace) -> dict:
    """``train-candidates --shards``: streaming training, one worker of many under TF_CONFIG."""
    from towers.distribute import cluster_role, strategy_for

    role = cluster_role()
    strategy = strategy_for(role)  # before any other TensorFlow op
    from towers.stream import save_on_chief, train_shards

    ignored = [flag for flag, given in (
        ("--protocol", args.protocol != "none"), ("--interactions", args.interactions),
        ("--users", args.users),
    ) if given]  # fmt: skip
    if ignored:
        raise ValueError(f"{', '.join(ignored)} do not apply to --shards (streaming training "
                         "reads the shards and, optionally, --items)")  # fmt: skip
    for flag in ("backup_every", "shuffle_buffer"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    items_path = Path(args.items) if args.items else Path(args.shards) / ITEMS_FILE
    items = pd.read_parquet(items_path) if items_path.exists() else None
    if args.items and items is None:
        raise FileNotFoundError(f"--items {args.items} does not exist")
    result = train_shards(
        shard_paths(args.shards), _build(TowerConfig, args), _build(TrainOptions, args),
        items=items, steps_per_epoch=args.steps_per_epoch, shuffle_buffer=args.shuffle_buffer,
        backup_dir=args.backup_dir, save_freq=args.backup_every or "epoch", role=role,
        strategy=strategy,
    )  # fmt: skip
    if save_on_chief(result, args.output, role, items=items) is not None:
        log.info("artefact written to %s", args.output)
    return {k: v for k, v in result.metrics.items() if not isinstance(v, list)}


def _retrain_from(args: argparse.Namespace) -> dict:
    """``retrain --from PARENT --output DIR``: tower and ranker are built in a work directory
    beside DIR and renamed into place together, so a run that dies leaves DIR as it was."""
    if not args.output:
        raise ValueError("--from needs --output (the artefact directory to write)")
    home_only = {"--store": args.store, "--tolerance": args.tolerance,
                 "--holdout-fraction": args.holdout_fraction}  # fmt: skip
    given = [flag for flag, value in home_only.items() if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)} apply to --home (the guarded promotion) only")
    parent, output = Path(args.parent).resolve(), Path(args.output).resolve()
    if output == parent or parent in output.parents:
        raise ValueError(
            f"--output {args.output} is the parent artefact or inside it: write the new version "
            "elsewhere (the parent stays, to compare with and to roll back to)"
        )
    check_output(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_dead(output.parent, f".{output.name}.partial-")
    work = work_dir(output.parent, f".{output.name}.partial-")
    try:
        built = work / "artefact"
        metrics = retrain_candidates(
            _source(args), parent, built, _build(TrainOptions, args),
            WarmStart(args.since, args.replay_fraction),
        )  # fmt: skip
        parent_ranker = parent / "ranker"
        if not args.no_ranker and (parent_ranker / "config.json").exists():
            # The parent ranker's settings (rated bag, label horizon, impressions, ...).
            ranker_config, ranker_options = ranker_settings(parent_ranker)
            train_ranker_for_artefact(
                _source(args), built, None, ranker_config, ranker_options,
                **ranker_impressions(parent_ranker),
            )  # fmt: skip
        replace_directory(built, output, keep=("logs",))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("artefact written to %s", output)
    return metrics


def _check_writable(path: str) -> None:
    parent = Path(path).parent
    if not parent.is_dir():
        raise FileNotFoundError(f"--output {path}: directory {parent} does not exist")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nextwatch`` console script. Returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command in ("train-candidates", "retrain") and getattr(args, "output", None):
            check_output(args.output)  # before training, not after
        if args.command == "evaluate" and args.output:
            _check_writable(args.output)
        if args.command == "train-candidates" and args.shards:
            print(json.dumps(_train_shards(args), indent=2))
        elif args.command == "generate-synthetic":
            print(json.dumps(generate(_build(SyntheticConfig, args), args.output), indent=2))
        elif args.command == "train-candidates":
            args.log_dir = args.log_dir or str(Path(args.output) / "logs")
            protocol = None if args.protocol == "none" else args.protocol
            metrics = train_candidates(
                _source(args),
                args.output,
                _build(TowerConfig, args),
                _build(TrainOptions, args),
                protocol,
            )
            log.info("artefact written to %s", args.output)
            print(
                json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)}, indent=2)
            )
        elif args.command == "retrain" and args.home:
            from serving.retrain import retrain_home

            if args.output or args.parent:
                raise ValueError("--home retrains the home's serving version into its registry: "
                                 "drop --output and --from (they are for --from mode)")  # fmt: skip
            decision = retrain_home(
                Path(args.home), _source(args), args.store, _build(TrainOptions, args),
                WarmStart(args.since, args.replay_fraction),
                0.05 if args.holdout_fraction is None else args.holdout_fraction,
                0.02 if args.tolerance is None else args.tolerance, ranker=not args.no_ranker,
            )  # fmt: skip
            print(json.dumps(asdict(decision), indent=2))
        elif args.command == "retrain":
            print(json.dumps(_retrain_from(args)["lineage"], indent=2))
        elif args.command == "rollback":
            from serving.registry import Registry
            from serving.serve import default_home, write_pointer

            home = Path(args.home) if args.home else default_home()
            registry = Registry(home / "models", create=False)
            with registry.lock():  # not between a retrain's promotion and its pointer write
                previous = registry.rollback()
                write_pointer(home, previous)  # running workers follow it
            print(json.dumps({"serving": previous.name, "artefact": str(previous)}))
        elif args.command == "evaluate":
            metrics = evaluate_artefact(_source(args), args.artefact, args.protocol, args.force)
            if args.output:
                Path(args.output).write_text(json.dumps(metrics, indent=2))
            print(json.dumps(metrics, indent=2))
        elif args.command == "train-ranker":
            metrics = train_ranker_for_artefact(
                _source(args), args.artefact, args.output, _build(RankerConfig, args),
                _build(RankerOptions, args), args.num_candidates, args.events_per_user,
            )  # fmt: skip
            print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)}))
        elif args.command == "recommend":
            print(json.dumps(_recommend(args), indent=2))
        elif args.command == "export-candidates" and args.engine == "beam":
            print(json.dumps(asdict(_beam_export(args)), indent=2))
        elif args.command == "export-candidates":
            if args.beam_args:
                raise ValueError(f"pipeline options {args.beam_args} need --engine beam")
            summary = export_candidates(
                args.artefact, args.output, k=args.k,
                users=read_user_list(args.users) if args.users else None,
                user_table=args.user_table, shard_size=args.shard_size, workers=args.workers,
                fmt=args.format, batch_size=args.batch_size, exclude_seen=not args.include_seen,
            )  # fmt: skip
            print(json.dumps(asdict(summary), indent=2))
        elif args.command == "export-savedmodels":
            paths = export_savedmodels(
                args.artefact, args.output, k=args.k, models=tuple(args.models),
                serving_version=args.serving_version, overwrite=args.overwrite,
            )  # fmt: skip
            print(json.dumps({name: str(path) for name, path in paths.items()}, indent=2))
        elif args.command == "serve":
            from serving.serve import ServeOptions, default_home, serve
            from serving.service import EventRules

            options = ServeOptions(
                home=Path(args.home) if args.home else default_home(), store=args.store,
                artefact=Path(args.artefact) if args.artefact else None, seed=not args.no_seed,
                rules=EventRules(rating_min=args.rating_min, rating_max=args.rating_max),
                retrain_every_events=args.retrain_every_events,
                retrain_every_seconds=args.retrain_every_seconds,
                history_cache_users=args.history_cache_users,
            )  # fmt: skip
            serve(options, _source(args), args.host, args.port, args.workers)
    except (DataError, ValueError, OSError, UnknownItemError, LookupError,
            tf.errors.OpError) as exc:  # fmt: skip
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
