"""The ``nextwatch`` command line: :func:`main` runs the subcommand that
:func:`serving.cli_args.build_parser` parsed (the list of commands is
:data:`serving.cli_args.COMMANDS`, shown by ``nextwatch --help``)."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from export.candidates import export_candidates
from export.savedmodel import export_savedmodels
from ranking.artefact import check_ranker_output, ranker_impressions, ranker_settings
from ranking.model import RankerConfig
from ranking.pipeline import train_ranker_for_artefact
from ranking.train import RankerOptions
from serving.api import Recommender
from serving.api_types import UnknownItemError
from serving.cli_args import (
    _build,
    _source,
    build_parser,
    new_user_preset,
    retrain_options,
    tower_presets,
)
from serving.store import StoreUnavailable
from towers._tf import tf
from towers.artefact import check_output, check_outside_registry, replace_directory
from towers.data import DataError
from towers.leftovers import remove_dead, work_dir
from towers.pipeline import evaluate_artefact, retrain_candidates, train_candidates
from towers.presets import NEW_USER_MAX_RATINGS
from towers.synthetic import ITEMS_FILE, SyntheticConfig, generate, shard_paths
from towers.tables import read_table
from towers.warmstart import WarmStart

if TYPE_CHECKING:
    from export.beam import BeamExportSummary

log = logging.getLogger("nextwatch")


def _split(value: str) -> list[str]:
    """A comma-separated flag value, read as one CSV row: an ID that contains a comma is
    quoted (``'"Star Wars, Episode IV",260'``)."""
    try:
        fields = next(csv.reader([value], skipinitialspace=True, strict=True), [])
    except csv.Error as exc:
        raise ValueError(f"cannot read {value!r} as comma-separated IDs: {exc}") from exc
    return [v.strip() for v in fields if v.strip()]


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
        frame = read_table(file)  # a CSV's cells as text: an empty cell is "", not "nan"
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
    # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first ID.
    text = file.read_text(encoding="utf-8-sig")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _recommend(args: argparse.Namespace) -> dict:
    if args.similar_to is not None:
        ignored = [flag for flag, given in (("--genres", args.genres), ("--exclude", args.exclude),
                                            ("--no-rank", args.no_rank)) if given]  # fmt: skip
        if ignored:
            raise ValueError(f"{', '.join(ignored)} do not apply to --similar-to")
    recommender = Recommender.load(args.artefact)
    if args.similar_to is not None:
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
        ("--users", args.users), ("--new-user-tower", args.new_user_tower),
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
        shard_paths(args.shards), *tower_presets(args),
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
            _source(args), parent, built, retrain_options(args),
            WarmStart(args.since, args.replay_fraction, not args.fresh_optimizer, args.softmax),
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
    if Path(path).is_dir():
        raise IsADirectoryError(f"--output {path} is a directory: give a file name")
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
            check_outside_registry(args.output)  # before training, not after
            check_output(args.output)
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
                _source(args), args.output, *tower_presets(args), protocol, new_user_preset(args)
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
                Path(args.home), _source(args), args.store, retrain_options(args),
                WarmStart(args.since, args.replay_fraction, not args.fresh_optimizer, args.softmax),
                0.05 if args.holdout_fraction is None else args.holdout_fraction,
                0.02 if args.tolerance is None else args.tolerance, ranker=not args.no_ranker,
            )  # fmt: skip
            print(json.dumps(asdict(decision), indent=2))
        elif args.command == "retrain":
            print(json.dumps(_retrain_from(args)["lineage"], indent=2))
        elif args.command == "rollback":
            from serving.home import default_home
            from serving.pointer import write_pointer
            from serving.registry import Registry

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
            ranker_output = Path(args.output or Path(args.artefact) / "ranker")
            check_outside_registry(ranker_output)  # up front
            check_ranker_output(ranker_output)
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
                new_user_max=None if args.main_tower_only else NEW_USER_MAX_RATINGS,
            )  # fmt: skip
            print(json.dumps({name: str(path) for name, path in paths.items()}, indent=2))
        elif args.command == "serve":
            from serving.home import default_home
            from serving.serve import ServeOptions, serve
            from serving.service import EventRules

            options = ServeOptions(
                home=Path(args.home) if args.home else default_home(), store=args.store,
                artefact=Path(args.artefact) if args.artefact else None, seed=not args.no_seed,
                rules=EventRules(rating_min=args.rating_min, rating_max=args.rating_max),
                retrain_every_events=args.retrain_every_events,
                retrain_every_seconds=args.retrain_every_seconds,
                history_cache_users=args.history_cache_users, placed_share=args.placed_share,
            )  # fmt: skip
            serve(options, _source(args), args.host, args.port, args.workers)
    except (DataError, ValueError, OSError, UnknownItemError, LookupError, StoreUnavailable,
            tf.errors.OpError) as exc:  # fmt: skip
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
