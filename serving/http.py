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
"""

import hmac
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import AfterValidator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from serving.api import UnknownItemError
from serving.metrics import CONTENT_TYPE, BodyLimitMiddleware, MetricsMiddleware, ServiceMetrics
from serving.schemas import (
    EVENT_SHAPES,
    ID_PATTERN,
    ID_RULE,
    MAX_K,
    EventBatch,
    EventBody,
    EventsAccepted,
    Health,
    ItemAdded,
    ItemIn,
    ItemOut,
    ModelOut,
    OnboardingOut,
    Problem,
    RecommendationRequest,
    RecommendationsOut,
    ReloadIn,
    ReloadOut,
    SimilarOut,
    UserIn,
    UserOut,
    check_id,
)
from serving.service import (
    ONBOARDING_DIVERSITY,
    ONBOARDING_MAX,
    EventRejected,
    LiveService,
    NewItemsUnsupported,
    Served,
)
from serving.store import IdempotencyConflict, ItemRecord, StoreUnavailable
from towers.content import metadata_tokens

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("static") / "index.html"
USER_FIELDS = ("age", "gender", "occupation", "zip_prefix")  # what POST /v1/users sets

UserId = Annotated[
    str, PathParam(min_length=1, max_length=128, description=ID_RULE), AfterValidator(check_id)
]
ItemId = Annotated[
    str, PathParam(min_length=1, max_length=128, description=ID_RULE), AfterValidator(check_id)
]
K = Annotated[int, Query(ge=1, le=MAX_K, description=f"how many items (1..{MAX_K})")]
ListParam = Annotated[
    list[Annotated[str, Query(max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")]],
    Query(max_length=1000, description="repeat the parameter, or separate values by commas"),
]


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


def field_name(loc: list[str | int]) -> str:
    """``["body", "events", 1, "rating"]`` -> ``events[1].rating``; ``["query", "k"]`` -> ``k``.

    The event body's shape tag (``["body", "batch", "events", ...]``) is left out."""
    parts = loc[1:] if len(loc) > 1 and loc[0] in ("body", "query", "path", "header") else loc
    if loc[:1] == ["body"] and parts and parts[0] in EVENT_SHAPES:
        parts = parts[1:]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _split(values: list[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


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

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        about_body = any(tuple(e["loc"])[:1] == ("body",) for e in exc.errors())
        if about_body and "json" not in content_type.split(";")[0].lower():
            # FastAPI reads a body it does not take for JSON as no object at all, and would
            # answer "Input should be a valid dictionary": name the real problem.
            return JSONResponse(
                {"detail": "body: send JSON with Content-Type: application/json (got "
                           f"{content_type or 'no Content-Type'!r})"},
                status_code=415,
            )  # fmt: skip
        errors = []
        for e in exc.errors():
            loc = [str(p) if not isinstance(p, int) else p for p in e["loc"]]
            msg = str(e["msg"])
            if e["type"] == "json_invalid":  # loc is ["body", character position]
                msg = f"invalid JSON at character {loc[-1]}: {e.get('ctx', {}).get('error', msg)}"
                loc = ["body"]
            elif loc[:1] == ["body"] and len(loc) > 1 and loc[1] in EVENT_SHAPES:
                loc = ["body", *loc[2:]]
            errors.append({"loc": loc, "msg": msg, "type": str(e["type"])})
        detail = "; ".join(f"{field_name(e['loc'])}: {e['msg']}" for e in errors)
        return JSONResponse({"detail": detail, "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Starlette's 405 lists the methods of the first route that matched the path only; a
        # path with two routes (GET and POST /v1/items) must list both.
        if exc.status_code == 405:
            allowed = set()
            for route in app.router.routes:
                match, _ = route.matches({**request.scope, "method": "GET"})
                if match != Match.NONE and getattr(route, "methods", None):
                    allowed |= set(route.methods)
            headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(allowed))}
            return JSONResponse({"detail": exc.detail}, status_code=405, headers=headers)
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer to a body it cannot decode (e.g. not UTF-8): say what is wrong.
            return JSONResponse({"detail": "body: not valid JSON text (UTF-8)"}, status_code=400)
        return await http_exception_handler(request, exc)

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.error("event store unavailable: %s", exc)
        return JSONResponse({"detail": f"event store unavailable: {exc}"}, status_code=503)

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
            user_id=user_id, k=k, exclude=_split(exclude), genres=_split(genres), rank=rank
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

    # ---------------------------------------------------------------------------------- items
    @app.get("/v1/items", response_model=list[ItemOut])
    async def search_items(
        q: Annotated[str, Query(min_length=1, max_length=200, description="title words")],
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> list[dict]:
        """Items whose title has every word of ``q`` (prefixes match), most popular first."""
        try:
            return service.sync_items().catalogue.search(q, limit)
        except ValueError as exc:
            raise HTTPException(422, f"q: {exc}") from None

    @app.post(
        "/v1/items",
        response_model=ItemAdded,
        status_code=201,
        dependencies=[Admin],
        responses={200: {"model": ItemAdded, "description": "an added item, updated"}},
    )
    async def post_item(body: ItemIn, response: Response) -> dict:
        """Add an item nobody has watched yet, from its metadata: the content projection places
        it in the item-vector space, it is stored durably, and it is retrievable from the next
        request on (on every worker within ``item_sync_interval_s``). Posting an added item
        again replaces its metadata and vector; a trained item is a 409."""
        record = ItemRecord(
            body.item_id, body.title.strip(), tuple(body.genres), body.year, tuple(body.tags)
        )
        try:
            stored, created, served = service.add_item(record)
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        except NewItemsUnsupported as exc:
            raise HTTPException(409, str(exc)) from None
        if not created:
            response.status_code = 200
        tokens = metadata_tokens(record.title, record.genres, record.year, record.tags)
        return {
            **served.catalogue.get(stored.item_id),
            "created": created,
            "model_version": served.version,
            "sequence": stored.sequence,
            "known_tokens": served.projection.known_tokens(tokens) if served.projection else [],
        }

    @app.get("/v1/onboarding", response_model=OnboardingOut)
    async def onboarding(
        n: Annotated[int, Query(ge=1, le=ONBOARDING_MAX, description="how many items")] = 12,
        diversity: Annotated[
            float, Query(ge=0, le=1, description="0: most popular first; 1: most spread out")
        ] = ONBOARDING_DIVERSITY,
    ) -> dict:
        """Items to ask a new user to rate first: well known, and spread across the item space,
        so that a few ratings tell the model much about the user."""
        served = service.slot.current
        with service.compute:
            ids = served.onboarding(n, diversity)
        return {"model_version": served.version, "items": [served.catalogue.get(i) for i in ids]}

    @app.get("/v1/items/{item_id}", response_model=ItemOut)
    async def get_item(item_id: ItemId) -> dict:
        try:
            return service.sync_items().catalogue.get(item_id)
        except UnknownItemError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get("/v1/items/{item_id}/similar", response_model=SimilarOut)
    async def similar(item_id: ItemId, k: K = 10) -> dict:
        """Items watched by the same users (dot product of item vectors, bias left out)."""
        served = service.sync_items()
        try:
            with service.compute:
                found = served.recommender.similar_items(item_id, k)
        except UnknownItemError as exc:
            raise HTTPException(404, str(exc)) from None
        items = [
            {"item_id": r.item_id, "title": r.title, "genres": list(r.genres),
             "score": r.score if math.isfinite(r.score) else None, "because": None}
            for r in found
        ]  # fmt: skip
        return {"item_id": item_id, "model_version": served.version, "items": items}

    # ---------------------------------------------------------------------------------- model
    @app.get("/v1/model", response_model=ModelOut)
    async def model() -> dict:
        served = service.slot.current
        info = served.recommender.describe()
        return {
            "version": served.version, "artefact": str(served.artefact),
            "trained_at": served.trained_at, "loaded_at": served.loaded_at,
            "items": info["items"], "ranker": info["ranker"], "index": info["index"],
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

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
