"""The HTTP API (FastAPI): recommendations, events, users, items, the model, health, metrics.

Versioned under ``/v1``; OpenAPI at ``/openapi.json`` and ``/docs``; the onboarding page at ``/``.
Writes (``POST /v1/events``, ``POST /v1/users``, ``POST /v1/items``) and admin calls need the API
key in the ``X-API-Key`` header: 401 without it, 403 with a wrong one. With an admin key
configured, catalogue changes and admin calls need it, and the write key (the one the web page
holds) only writes events and users. Bad input is a 4xx whose
``detail`` names the field; bodies over ``max_body_bytes`` get 413, a body that is not sent as
JSON 415, and ``k`` is capped at ``MAX_K``.

Endpoints that compute (recommendations, similar items, event validation, lookups) are ``async
def``: they run on the event loop, one after another. A request is a few milliseconds of numpy
and store work; running them in FastAPI's thread pool instead passed the GIL between threads on
every numpy call and measured worse (docs/service.md). Two things wait rather than compute, and
run in the thread pool so that reads go on meanwhile: the durable commit of ``POST /v1/events``
(an fsync, awaited before the acknowledgement) and ``POST /v1/admin/reload``.

The item endpoints are :mod:`serving.http_items`, the error answers :mod:`serving.http_errors`,
and the path and query parameter types :mod:`serving.http_params`.
"""

import hmac
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Response
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool
from starlette.middleware.gzip import GZipMiddleware

from serving.http_errors import (
    field_name,  # noqa: F401  (re-exported: serving.http.field_name is public API)
    install_error_handlers,
)
from serving.http_items import add_item_routes
from serving.http_params import (
    ItemId,  # noqa: F401  (re-exported: serving.http.ItemId is public API)
    K,
    ListParam,
    UserId,
    split_values,
)
from serving.metrics import (
    CONTENT_TYPE,
    BodyLimitMiddleware,
    MetricsMiddleware,
    PathEncodingMiddleware,
    ServiceMetrics,
)
from serving.schemas import (
    ID_PATTERN,
    EventBatch,
    EventBody,
    EventsAccepted,
    Health,
    ModelOut,
    Problem,
    RecommendationRequest,
    RecommendationsOut,
    ReloadIn,
    ReloadOut,
    UserIn,
    UserOut,
)
from serving.service import EventRejected, LiveService, Served
from serving.store import IdempotencyConflict, StoreUnavailable

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("static") / "index.html"
USER_FIELDS = ("age", "gender", "occupation", "zip_prefix")  # what POST /v1/users sets
GZIP_MIN_BYTES = 8192  # answers at least this long are gzip-compressed for clients that accept it
GZIP_LEVEL = 6


@dataclass(frozen=True)
class HttpSettings:
    """Service settings.

    Parameters
    ----------
    api_key : str
        The key that writes (events, users) must send in ``X-API-Key``: the one the web page
        holds.
    admin_key : str, optional
        The key that catalogue changes (``POST /v1/items``) and admin calls
        (``POST /v1/admin/reload``) must send; it is accepted for writes too. None: ``api_key``
        does both (one key).
    max_body_bytes : int
        Largest request body accepted.
    current_artefact : callable, optional
        Where ``POST /v1/admin/reload`` without a body loads from (the registry's current
        version); None reloads the artefact that is serving.
    on_swap : callable, optional
        Called with the new model after a reload (tells the other worker processes).
    """

    api_key: str
    admin_key: str | None = None
    max_body_bytes: int = 1 << 20
    current_artefact: Callable[[], Path | None] | None = None
    on_swap: Callable[[Served], None] | None = None


def create_app(service: LiveService, settings: HttpSettings) -> FastAPI:
    """The FastAPI application over ``service``."""
    if not settings.api_key:
        raise ValueError("api_key must not be empty")
    problem = {"model": Problem}
    app = FastAPI(
        title="nextwatch",
        version="1",
        description="Next-watch recommendations from live histories (YouTube-DNN design).",
        responses={code: problem for code in (400, 401, 403, 404, 409, 413, 415, 422, 503)},
    )
    metrics = ServiceMetrics()
    metrics.serving(service.slot.current.version)
    app.state.service = service
    app.state.metrics = metrics
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False)

    admin_key = settings.admin_key or settings.api_key

    def _matches(key: str, expected: str) -> bool:
        return hmac.compare_digest(key.encode(), expected.encode())

    def require_key(key: Annotated[str | None, Depends(key_header)]) -> None:
        if not key:
            raise HTTPException(401, "X-API-Key header is required for this endpoint")
        if not (_matches(key, settings.api_key) or _matches(key, admin_key)):
            raise HTTPException(403, "X-API-Key is not valid")

    def require_admin(key: Annotated[str | None, Depends(key_header)]) -> None:
        if not key:
            raise HTTPException(401, "X-API-Key header is required for this endpoint")
        if not _matches(key, admin_key):
            detail = "X-API-Key is not valid"
            if _matches(key, settings.api_key):
                detail += ": this endpoint needs the admin key, not the write key"
            raise HTTPException(403, detail)

    Auth = Depends(require_key)
    Admin = Depends(require_admin)

    install_error_handlers(app)  # serving.http_errors

    # ------------------------------------------------------------------------ recommendations
    def _recommend(**kwargs) -> JSONResponse:
        try:
            out = service.recommend(**kwargs)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        # The hot path: the service builds exactly the documented shape (tests check it against
        # the schema), so skip FastAPI's second validation and serialisation pass (~1 ms).
        return JSONResponse(out)

    @app.get("/v1/users/{user_id}/recommendations", response_model=RecommendationsOut)
    async def user_recommendations(
        user_id: UserId,
        k: K = 10,
        exclude: ListParam = [],  # noqa: B006  (FastAPI copies defaults per request)
        genres: ListParam = [],  # noqa: B006
        rank: bool = True,
    ) -> JSONResponse:
        """Top k for a user, from their stored history and demographics (a user the store does
        not know gets the new-user list)."""
        return _recommend(
            user_id=user_id,
            k=k,
            exclude=split_values(exclude),
            genres=split_values(genres),
            rank=rank,
        )

    @app.post("/v1/recommendations", response_model=RecommendationsOut)
    async def anonymous_recommendations(body: RecommendationRequest) -> JSONResponse:
        """Top k for an anonymous history (oldest first) plus features."""
        features = body.features.model_dump(exclude_none=True)
        return _recommend(
            history=body.history, features=features, k=body.k, exclude=body.exclude,
            genres=body.genres, rank=body.rank,
        )  # fmt: skip

    # --------------------------------------------------------------------------------- events
    @app.post(
        "/v1/events",
        response_model=EventsAccepted,
        status_code=201,
        dependencies=[Auth],
        responses={200: {"model": EventsAccepted, "description": "a replayed request"}},
    )
    async def post_events(
        body: EventBody,
        response: Response,
        idempotency_key: Annotated[
            str | None,
            Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=ID_PATTERN),
        ] = None,
    ) -> dict:
        """Store one event or a batch (``{"events": [...]}``), durably, then acknowledge.

        Send an ``Idempotency-Key`` header to make retries safe: a repeat of the same request
        returns the first answer (200, ``replayed``) and writes nothing; the same key with a
        different body is a 409."""
        events = body.events if isinstance(body, EventBatch) else [body]
        raw = [e.model_dump(exclude_none=True) for e in events]
        try:
            checked, fingerprint = service.prepare_events(raw)
            # The durable commit (an fsync) waits in a worker thread, so reads keep being
            # served meanwhile; the answer still comes only after the commit.
            seqs, replayed = await run_in_threadpool(
                service.store_events, checked, fingerprint, idempotency_key
            )
        except EventRejected as exc:
            message = str(exc)
            if not isinstance(body, EventBatch):  # a single event: its fields, not events[0]
                message = message.removeprefix("events[0].")
            raise HTTPException(422, message) from None
        except IdempotencyConflict as exc:
            raise HTTPException(409, str(exc)) from None
        if replayed:
            response.status_code = 200
            metrics.replays.inc()
        else:
            metrics.events.inc(len(seqs))
        return {"accepted": len(seqs), "sequence_numbers": seqs, "replayed": replayed}

    # ---------------------------------------------------------------------------------- users
    def _user_out(user_id: str) -> dict | None:
        state = service.state(user_id)
        if not state.registered and not state.events:
            return None
        user = service.store.get_user(user_id) if state.registered else None
        return {
            "user_id": user_id,
            **(
                {}
                if user is None
                else {
                    "age": user.age,
                    "gender": user.gender,
                    "occupation": user.occupation,
                    "zip_prefix": user.zip_prefix,
                    "created_at": user.created_at,
                }
            ),  # fmt: skip
            "events": state.events,
            "history_length": len(state.history),
            "rating_mean": state.stats.get("rating_mean"),
            "recent": state.history[::-1][:20],
        }

    @app.post(
        "/v1/users",
        response_model=UserOut,
        status_code=201,
        dependencies=[Auth],
        responses={200: {"model": UserOut, "description": "an existing user, updated"}},
    )
    async def post_user(body: UserIn, response: Response) -> dict:
        """Register a user (optional demographics), or update an existing user's: only the fields
        sent change (``null`` clears one); the others keep their stored values."""
        user_id = body.user_id or uuid.uuid4().hex
        sent = {f: getattr(body, f) for f in body.model_fields_set & set(USER_FIELDS)}
        _, existed = service.store.update_user(user_id, sent)  # one transaction
        if existed:
            response.status_code = 200
        return _user_out(user_id)

    @app.get("/v1/users/{user_id}", response_model=UserOut)
    async def get_user(user_id: UserId) -> dict:
        """A user's demographics and history summary."""
        out = _user_out(user_id)
        if out is None:
            raise HTTPException(404, f"user_id {user_id!r} has no record and no events")
        return out

    # ---------------------------------------------------------------- items (serving.http_items)
    add_item_routes(app, service, Admin)

    # ---------------------------------------------------------------------------------- model
    @app.get("/v1/model", response_model=ModelOut)
    async def model() -> dict:
        served = service.slot.current
        info = served.recommender.describe()
        return {
            "version": served.version, "artefact": str(served.artefact),
            "trained_at": served.trained_at, "loaded_at": served.loaded_at,
            "items": info["items"], "ranker": info["ranker"], "index": info["index"],
            "new_user_tower": info["new_user_tower"],
            "swaps": service.slot.swaps, "metrics": served.metrics,
        }  # fmt: skip

    @app.post("/v1/admin/reload", response_model=ReloadOut, dependencies=[Admin])
    def reload(body: ReloadIn | None = None) -> dict:
        """Load a model version and swap it in; requests in flight finish on the old one."""
        target = body.artefact if body is not None and body.artefact else None
        try:
            if target is None and settings.current_artefact is not None:
                target = settings.current_artefact()
            old, new = service.slot.reload(target)
        except Exception as exc:  # noqa: BLE001  (any load failure: keep serving the old one)
            log.warning("reload of %s refused: %s", target, exc)
            raise HTTPException(422, f"artefact: cannot load {target}: {exc}") from None
        previous = old.version
        del old  # in-flight requests may still hold it; the slot collects it after they finish
        metrics.swaps.inc()
        metrics.serving(new.version)
        if settings.on_swap is not None:
            try:
                settings.on_swap(new)
            except OSError as exc:  # this worker swapped; the others are told next time
                log.error("could not tell the other workers about %s: %s", new.version, exc)
        return {"previous": previous, "current": new.version, "artefact": str(new.artefact)}

    # ----------------------------------------------------------------------------------- page
    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        """The onboarding page: search, rate, and watch the recommendations change."""
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    # ------------------------------------------------------------------------ health, metrics
    @app.get("/health/live", response_model=Health)
    async def live() -> dict:
        return {"status": "ok"}

    @app.get("/health/ready", response_model=Health)
    async def ready(response: Response) -> dict:
        checks = {"model": service.slot.current.version}
        try:
            service.store.ping()
            checks["store"] = "ok"
        except StoreUnavailable as exc:
            checks["store"] = str(exc)
            response.status_code = 503
            return {"status": "unavailable", "checks": checks}
        return {"status": "ok", "checks": checks}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    # Large answers (the page, the 300-film onboarding list, long searches) go gzip-compressed
    # to a client that accepts it; a recommendation list is under the threshold and is sent
    # plain, so the event loop spends no time compressing it.
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MIN_BYTES, compresslevel=GZIP_LEVEL)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(PathEncodingMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
