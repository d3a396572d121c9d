"""The ``nextwatch`` command line's arguments: one parser with a subcommand per job, and the
helpers that turn parsed flags into the project's config objects (see :mod:`serving.cli`)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import fields, replace

from export.candidates import FORMATS
from export.savedmodel import MODEL_NAMES
from ranking.model import RankerConfig
from ranking.train import RankerOptions
from towers.model import TowerConfig
from towers.movielens import ARCHIVES, DATA_ENV
from towers.pipeline import DataSource
from towers.presets import (
    NEW_USER_MAX_RATINGS,
    benchmark_config,
    benchmark_options,
    new_user_config,
    warm_start_options,
)
from towers.retrieval import PLACED_SHARE
from towers.splits import SPLITS
from towers.synthetic import SyntheticConfig
from towers.train import DECAYS, TrainOptions
from towers.warmstart import WarmStart

ENGINES = ("local", "beam")
COMMANDS = """The nextwatch commands:

``nextwatch train-candidates``   train the next-watch tower and save an artefact directory
                                 (``--shards``: streaming, and multi-worker under TF_CONFIG)
``nextwatch generate-synthetic`` a synthetic log of any size, as Parquet shards
``nextwatch retrain``            warm-start a tower on new events (``--home``: guarded promotion)
``nextwatch rollback``           serve the previously promoted version again
``nextwatch evaluate``           evaluate an artefact on the protocol it was trained for
``nextwatch train-ranker``       train the ranking network for a tower artefact
``nextwatch recommend``          top-k for a user or a history, from an artefact (JSON)
``nextwatch export-candidates``  batch top-k for all users (or a list), sharded and resumable
``nextwatch export-savedmodels`` SavedModels for TF Serving (query tower, brute force, ScaNN)
``nextwatch serve``              the live HTTP service (trains a first model if there is none)
"""


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
    group.add_argument(
        "--rating-col",
        help="the rating column; it must exist if given (default: 'rating' if the file has it)",
    )
    group.add_argument("--timestamp-col", default="timestamp")


def _share(text: str) -> float | None:
    """``--placed-share``: a number in [0, 1], or "none"."""
    if text.strip().lower() == "none":
        return None
    try:
        share = float(text)
    except ValueError:
        share = math.nan
    if not 0 <= share <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or 'none', got {text!r}")
    return share


def _source(args: argparse.Namespace) -> DataSource:
    return DataSource(
        dataset=None if args.interactions else args.dataset, data_dir=args.data_dir,
        interactions=args.interactions, items=args.items, users=args.users,
        user_col=args.user_col, item_col=args.item_col, rating_col=args.rating_col,
        timestamp_col=args.timestamp_col,
    )  # fmt: skip


def _add_dataclass_flags(
    parser: argparse.ArgumentParser,
    defaults: object,
    title: str,
    skip: Sequence[str] = (),
    preset: bool = False,
) -> None:
    """One flag per init field of the dataclass instance ``defaults``, defaulting to its values.

    With ``preset``, a flag not given stays out of the namespace, so that :func:`_from_preset`
    can take its value from the preset of the data chosen (``defaults`` is what the help shows).
    """
    group = parser.add_argument_group(title)
    for f in fields(defaults):
        if not f.init or f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        shown = "(default: %(default)s)"
        if preset:
            shown = f"(default: the dataset's preset; {default} in the shared one)"
        value = argparse.SUPPRESS if preset else default
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        elif f.name == "max_examples_per_user":
            group.add_argument(
                flag,
                type=lambda v: None if v == "none" else int(v),
                default=value,
                help="int, or 'none' for no cap " + shown,
            )
        elif f.name == "decay":
            group.add_argument(flag, choices=DECAYS, default=value, help=shown)
        else:
            kind = type(default) if default is not None else str
            group.add_argument(flag, type=kind, default=value, help=shown)


def _build(cls: type, args: argparse.Namespace):
    return cls(
        **{f.name: getattr(args, f.name) for f in fields(cls) if f.init and hasattr(args, f.name)}
    )


def _from_preset(preset: object, args: argparse.Namespace):
    """``preset`` (a dataclass instance) with the fields given on the command line replaced."""
    given = {f.name: getattr(args, f.name) for f in fields(preset) if f.init and f.name in args}
    return replace(preset, **given)


def tower_presets(args: argparse.Namespace) -> tuple[TowerConfig, TrainOptions]:
    """``train-candidates``' tower configuration and training options: the preset of the
    MovieLens dataset chosen (the shared one for ``--interactions`` or ``--shards``), with the
    flags given on the command line."""
    own = getattr(args, "interactions", None) or getattr(args, "shards", None)
    dataset = None if own else args.dataset
    return (
        _from_preset(benchmark_config(dataset), args),
        _from_preset(benchmark_options(dataset=dataset), args),
    )


def new_user_preset(args: argparse.Namespace) -> TowerConfig | None:
    """``train-candidates --new-user-tower``'s second tower: the new-user preset of the dataset
    chosen, with the model flags given on the command line; None without the flag."""
    if not getattr(args, "new_user_tower", False):
        return None
    own = getattr(args, "interactions", None)
    return _from_preset(new_user_config(None if own else args.dataset), args)


def retrain_options(args: argparse.Namespace) -> TrainOptions:
    """``retrain``'s training options: the warm-start preset of the MovieLens dataset chosen
    (the shared one for ``--interactions``), with the flags given on the command line."""
    dataset = None if args.interactions else args.dataset
    return _from_preset(warm_start_options(dataset=dataset), args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nextwatch", description=COMMANDS, formatter_class=argparse.RawDescriptionHelpFormatter
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
    # The defaults are the dataset's benchmark preset, so the README's numbers are what a plain
    # run gets.
    _add_dataclass_flags(
        train, benchmark_config(), "model (defaults: the benchmark preset)", preset=True
    )
    _add_dataclass_flags(train, benchmark_options(), "training", skip=("log_dir",), preset=True)
    train.add_argument("--log-dir", help="TensorBoard logs (default: OUTPUT/logs)")
    train.add_argument(
        "--new-user-tower", action="store_true",
        help="also train the new-user preset into OUTPUT/new_user, which answers users with at "
        f"most {NEW_USER_MAX_RATINGS} rated items (as `nextwatch serve` trains it)",
    )  # fmt: skip
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
        "--replay-fraction", type=float, default=WarmStart().replay_fraction,
        help="share of older examples replayed (default: %(default)s)",
    )  # fmt: skip
    retrain.add_argument(
        "--softmax", choices=("full", "sampled"), default=None,
        help="the softmax to train with (default: full where the catalogue fits it, as 'auto' "
        "picks, else the parent's)",
    )  # fmt: skip
    retrain.add_argument(
        "--fresh-optimizer", action="store_true",
        help="start a fresh Adam instead of continuing the parent's (its optimizer.npz)",
    )  # fmt: skip
    retrain.add_argument(
        "--no-ranker", action="store_true", help="do not retrain the parent's ranker"
    )
    _add_dataclass_flags(retrain, warm_start_options(), "training", skip=("log_dir",), preset=True)

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
    who.add_argument(
        "--history",
        help="comma-separated watched item IDs, oldest first (quote an ID with a comma: "
        "'\"Star Wars, Episode IV\",260')",
    )
    who.add_argument("--similar-to", help="an item ID: its most similar items")
    rec.add_argument("--k", type=int, default=10)
    rec.add_argument("--genres", default="", help="comma-separated genre filter")
    rec.add_argument(
        "--exclude", default="", help="comma-separated item IDs to leave out (quoted as --history)"
    )
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
        "--main-tower-only", action="store_true",
        help="export the main tower alone; by default, where the artefact has a new-user tower, "
        f"the retrieval models send histories of at most {NEW_USER_MAX_RATINGS} known items to "
        "it, as the service does",
    )  # fmt: skip
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
    serve.add_argument(
        "--placed-share", type=_share, default=PLACED_SHARE,
        help="the most of any list that items added from metadata (POST /v1/items) may take, "
        "at least one item; 'none': no cap (default: %(default)s)",
    )  # fmt: skip
    serve.add_argument("--rating-min", type=float, default=0.5, help="(default: %(default)s)")
    serve.add_argument("--rating-max", type=float, default=5.0, help="(default: %(default)s)")
    return parser
