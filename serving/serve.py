"""``nextwatch serve``: the main job. Train on first run, open the event store, serve HTTP.

On first run with no model in the registry, the benchmark configuration is trained on the
chosen data (ml-latest-small by default, from ``--data-dir`` / ``$NEXTWATCH_DATA``, or
downloaded and checksum-verified) and promoted. An empty event store is seeded with that
data's ratings and demographics, so its users have histories from the first request. Then the
service listens on 127.0.0.1.

Everything lives in one home directory (``--home``, ``$NEXTWATCH_HOME``, else
``~/.local/share/nextwatch``)::

    HOME/models/        the model registry (serving.registry)
    HOME/events.db      the SQLite event store (unless --store names PostgreSQL)
    HOME/api_key        the write key: events and users, what the web page holds (0600)
    HOME/admin_key      the admin key: POST /v1/items, POST /v1/admin/reload, and writes (0600)
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from fastapi import FastAPI

from serving.home import (
    ADMIN_KEY_ENV,  # noqa: F401  (re-exported: serving.serve.ADMIN_KEY_ENV is public API)
    API_KEY_ENV,  # noqa: F401  (re-exported: serving.serve.API_KEY_ENV is public API)
    HOME_ENV,  # noqa: F401  (re-exported: serving.serve.HOME_ENV is public API)
    admin_key,
    api_key,
    default_home,  # noqa: F401  (re-exported: serving.serve.default_home is public API)
)
from serving.http import HttpSettings, create_app
from serving.pointer import POINTER, PointerWatcher, read_pointer, write_pointer
from serving.registry import Registry
from serving.service import EventRules, LiveService, ModelSlot, Served, freeze_imports
from serving.store import EventStore, open_store
from towers.pipeline import DataSource
from towers.retrieval import PLACED_SHARE, placed_cap

log = logging.getLogger(__name__)

WORKER_ENV = "NEXTWATCH_WORKER"


def train_first_model(registry: Registry, source: DataSource) -> Path:
    """Train the benchmark tower, the new-user tower beside it and the benchmark tower's ranker
    on ``source``, and where validation picked it (``ranking.train.VALIDATED_NEW_USER_RANKER``:
    ml-latest-small) the new-user tower's own ranker, trained on new users' impressions; publish
    and promote them (the rankers with the settings validated for a MovieLens dataset). Users
    with at most ``towers.presets.NEW_USER_MAX_RATINGS`` rated items get their candidates from
    the new-user tower, reranked by its own ranker if it has one (``serving.api.Recommender``)."""
    from ranking.pipeline import train_ranker_for_artefact
    from ranking.train import validated_settings
    from towers.pipeline import train_candidates
    from towers.presets import benchmark_config, benchmark_options, new_user_config

    staging = registry.staging()
    try:
        log.info("no model yet: training the benchmark configuration into %s", staging)
        # The dataset's preset (the shared one for a user's own log); no progress bars in logs.
        options = benchmark_options(verbose=0, dataset=source.dataset)
        train_candidates(
            source, staging, benchmark_config(source.dataset), options,
            new_user=new_user_config(source.dataset),
        )  # fmt: skip
        ranker_config, ranker_options = validated_settings(source.dataset)
        log.info("training the ranker(s) (label horizon %d, tower-score weight %g, %d member(s))",
                 ranker_options.label_horizon, ranker_config.tower_score_weight,
                 ranker_config.members)  # fmt: skip
        train_ranker_for_artefact(source, staging, config=ranker_config, options=ranker_options)
        path = registry.publish(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    registry.promote(path.name)
    log.info("model %s published and promoted", path.name)
    return path


def seed_store(store: EventStore, source: DataSource, rules: EventRules | None = None) -> int:
    """Import ``source``'s ratings and demographics into an empty store; returns rows written.

    The events go in as one transaction (nothing serves yet, so no live write waits on it): a
    seed interrupted part-way leaves no events, and the next start seeds again, instead of
    serving a partial log because the store is no longer empty.

    Raises
    ------
    ValueError
        If a rating lies outside ``rules``' range (default :class:`EventRules`), which live
        ratings must keep to (nothing is written).
    """
    rules = rules or EventRules()
    data = source.load()
    ratings = data.interactions["rating"].dropna()
    if len(ratings) and not rules.rating_min <= ratings.min() <= ratings.max() <= rules.rating_max:
        raise ValueError(
            f"the log's ratings run from {ratings.min():g} to {ratings.max():g}, outside the "
            f"range live ratings are held to, [{rules.rating_min:g}, {rules.rating_max:g}]: "
            "give the log's scale with --rating-min and --rating-max"
        )
    if data.users is not None and not data.users.empty:
        # Users registered before the first seed (a store started with --no-seed) keep theirs.
        store.import_users(data.users, keep_existing=True)
    frame = data.interactions[["user_id", "item_id", "rating", "timestamp"]]
    return store.import_events(frame, batch_size=max(len(frame), 1))


@dataclass(frozen=True)
class ServeOptions:
    """Where ``nextwatch serve`` keeps and finds things (see the module docstring)."""

    home: Path
    store: str | None = None  # default sqlite:///HOME/events.db
    artefact: Path | None = None  # serve this artefact instead of the registry's current
    seed: bool = True
    rules: EventRules = EventRules()
    retrain_every_events: int | None = None  # run `nextwatch retrain --home` after N events
    retrain_every_seconds: float | None = None  # ... or every S seconds
    history_cache_users: int = 10_000  # folded histories each process keeps (0: none)
    placed_share: float | None = PLACED_SHARE  # of a list, for items added from metadata

    def __post_init__(self) -> None:
        placed_cap(1, self.placed_share)  # checks it
        if self.retrain_every_events is not None and self.retrain_every_events < 1:
            raise ValueError(
                f"retrain_every_events must be >= 1 (or None: no event trigger), got "
                f"{self.retrain_every_events}"
            )
        every_s = self.retrain_every_seconds
        if every_s is not None and not (every_s > 0 and math.isfinite(every_s)):
            raise ValueError(
                f"retrain_every_seconds (--retrain-every-seconds) must be a finite number > 0 "
                f"(or None: no timer), got {every_s}"
            )
        if self.history_cache_users < 0:
            raise ValueError(f"history_cache_users must be >= 0, got {self.history_cache_users}")


def prepare(options: ServeOptions, source: DataSource) -> tuple[Path, str, dict]:
    """The once-per-start work: train a first model if the registry has none, seed an empty
    store, create the API key, point the workers at the artefact. Returns ``(artefact,
    store_url, info)``."""
    home = options.home
    home.mkdir(parents=True, exist_ok=True)
    registry = Registry(home / "models")
    if options.artefact is not None:
        artefact = options.artefact
    else:
        artefact = registry.current()
        if artefact is not None:  # refused before the pointer the workers follow moves
            registry.verify(artefact.name)
        else:
            artefact = train_first_model(registry, source)
    store_url = options.store or f"sqlite:///{home / 'events.db'}"
    with open_store(store_url) as store:
        if options.seed and store.event_count() == 0:
            rows = seed_store(store, source, options.rules)
            log.info("seeded the empty event store with %d ratings from %s", rows, source.dataset)
        info = {
            "store": store.describe(),
            "events": store.event_count(),
            "users": store.user_count(),
        }
    info["api_key"] = api_key(home)[1]
    info["admin_key"] = admin_key(home)[1]
    write_pointer(home, artefact)
    return Path(artefact), store_url, info


def assemble(
    home: Path,
    store_url: str,
    rules: EventRules,
    registry_reload: bool,
    history_cache_users: int = 10_000,
    placed_share: float | None = PLACED_SHARE,
) -> tuple[FastAPI, EventStore, LiveService]:
    """One worker's app: load the pointed-to artefact, open the store, wire hot swaps."""
    artefact = read_pointer(home)
    if artefact is None:
        raise FileNotFoundError(f"{home / POINTER} is missing: run prepare() first")
    freeze_imports()
    loader = functools.partial(Served.load, placed_share=placed_share)  # also for swaps
    served = loader(artefact)
    served.warm()  # as a swapped-in model is, so that the first users do not pay for it
    slot = ModelSlot(served, loader)
    store = open_store(store_url)
    service = LiveService(store, slot, rules, history_cache_users=history_cache_users)
    registry = Registry(home / "models")
    watcher = PointerWatcher(home, slot)
    settings = HttpSettings(
        api_key=api_key(home)[0],
        admin_key=admin_key(home)[0],
        current_artefact=registry.current if registry_reload else None,
        on_swap=lambda served: write_pointer(home, served.artefact),
    )
    app = create_app(service, settings)

    def followed(served: Served) -> None:  # a swap by another worker, retrain or rollback
        app.state.metrics.serving(served.version)
        app.state.metrics.swaps.inc()

    watcher.on_swap = followed
    app.router.on_startup.append(watcher.start)
    app.router.on_shutdown.append(watcher.stop)
    app.router.on_shutdown.append(store.close)
    return app, store, service


def build_service(options: ServeOptions, source: DataSource) -> tuple:
    """Everything but the HTTP server, in this process: ``(app, store, info)``."""
    artefact, store_url, info = prepare(options, source)
    app, store, service = assemble(
        options.home,
        store_url,
        options.rules,
        registry_reload=options.artefact is None,
        history_cache_users=options.history_cache_users,
        placed_share=options.placed_share,
    )
    served = service.slot.current
    info = {
        "model": served.version,
        "artefact": str(artefact),
        "items": len(served.catalogue),
        "ranker": served.recommender.reranker is not None,
        **info,
    }
    return app, store, info


def worker_app() -> FastAPI:
    """The app of one worker process (``--workers`` > 1); its settings come from
    ``$NEXTWATCH_WORKER``, set by :func:`serve`."""
    _limit_blas()
    config = json.loads(os.environ[WORKER_ENV])
    app, _, _ = assemble(
        Path(config["home"]), config["store"], EventRules(**config["rules"]),
        config["registry_reload"], config["history_cache_users"], config["placed_share"],
    )  # fmt: skip
    return app


def _limit_blas() -> None:

    from threadpoolctl import threadpool_limits

    # One BLAS thread per request: the matrices are small (100 candidates), and OpenBLAS's
    # extra threads spin on the other core, stealing it from concurrent requests (measured:
    # ranked requests 15 % slower with the default pool).
    threadpool_limits(limits=1, user_api="blas")


def serve(
    options: ServeOptions, source: DataSource, host: str, port: int, workers: int = 1
) -> None:
    """Prepare, then run uvicorn until interrupted: in this process, or in ``workers``
    processes that share the port (``serving.workers``; each loads the model, and hot swaps
    reach all of them through ``HOME/serving.json``)."""
    import uvicorn

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _limit_blas()
    if workers == 1:
        app, store, info = build_service(options, source)
    else:
        artefact, store_url, info = prepare(options, source)
        info = {"artefact": str(artefact), **info, "workers": workers}
        metrics_dir = options.home / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        environment = {
            WORKER_ENV: json.dumps(
                {
                    "home": str(options.home),
                    "store": store_url,
                    "rules": asdict(options.rules),
                    "registry_reload": options.artefact is None,
                    "history_cache_users": options.history_cache_users,
                    "placed_share": options.placed_share,
                }
            ),  # fmt: skip
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
    for name, value in info.items():
        log.info("%-9s %s", name, value)
    log.info("serving on http://%s:%d (OpenAPI at /docs)", host, port)
    if host in ("127.0.0.1", "localhost", "::1"):
        # As Jupyter does for its token: the page reads the key from the URL fragment, which
        # the browser never sends to the server. Only on loopback, where the log is the user's.
        log.info("the page: http://%s:%d/#key=%s", host, port, api_key(options.home)[0])
    scheduler = _scheduler(options, source)
    try:
        if workers == 1:
            try:
                uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
            finally:
                store.close()
        else:
            from serving.workers import run_workers

            run_workers(host, port, workers, environment)
    finally:
        if scheduler is not None:
            scheduler.stop()


def source_args(source: DataSource) -> list[str]:
    """``nextwatch`` data flags that name ``source`` (for a retrain subprocess)."""
    flags = {
        "--dataset": source.dataset, "--data-dir": source.data_dir,
        "--interactions": source.interactions, "--items": source.items, "--users": source.users,
        "--user-col": source.user_col, "--item-col": source.item_col,
        "--rating-col": source.rating_col, "--timestamp-col": source.timestamp_col,
    }  # fmt: skip
    return [part for flag, value in flags.items() if value for part in (flag, str(value))]


def _scheduler(options: ServeOptions, source: DataSource):
    """Start the retrain schedule if the options ask for one (only with a registry)."""
    if not (options.retrain_every_events or options.retrain_every_seconds):
        return None
    if options.artefact is not None:
        raise ValueError("scheduled retraining needs the registry: drop --artefact")
    from serving.retrain import RetrainScheduler

    store = open_store(options.store or f"sqlite:///{options.home / 'events.db'}")
    args = source_args(source)
    if options.store:
        args += ["--store", options.store]
    scheduler = RetrainScheduler(
        options.home, store.event_count, options.retrain_every_events,
        options.retrain_every_seconds, args,
    )  # fmt: skip
    scheduler.start()
    log.info(
        "retraining in a separate process every %s events / %s s",
        options.retrain_every_events, options.retrain_every_seconds,
    )  # fmt: skip
    return scheduler
