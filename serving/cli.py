"""The ``nextwatch`` command line.

``nextwatch train-candidates``  train the next-watch tower and save an artefact directory
``nextwatch evaluate``          evaluate an artefact on the protocol it was trained for
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from towers.data import DataError
from towers.model import TowerConfig
from towers.movielens import ARCHIVES, DATA_ENV
from towers.pipeline import DataSource, evaluate_artefact, train_candidates
from towers.presets import benchmark_config, benchmark_options
from towers.splits import SPLITS
from towers.train import TrainOptions

log = logging.getLogger("nextwatch")


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
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nextwatch`` console script. Returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "train-candidates":
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
        elif args.command == "evaluate":
            metrics = evaluate_artefact(_source(args), args.artefact, args.protocol, args.force)
            if args.output:
                Path(args.output).write_text(json.dumps(metrics, indent=2))
            print(json.dumps(metrics, indent=2))
    except (DataError, ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
