"""How the HTTP API answers errors: a 422 names each bad field, a body not sent as JSON is a 415,
a body that cannot be decoded a 400 that says so, a 405 lists every method of the path, and an
unavailable event store is a 503.

:func:`install_error_handlers` adds the handlers to the app of :func:`serving.http.create_app`.
"""

import logging

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from serving.schemas import EVENT_SHAPES
from serving.store import StoreUnavailable

log = logging.getLogger("serving.http")  # the name it logged under before this module was split


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


def install_error_handlers(app: FastAPI) -> None:
    """Add the API's exception handlers (see the module docstring) to ``app``."""

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
            # FastAPI's answer to a body it cannot decode: say what is wrong.
            return JSONResponse({"detail": _unparsable_body(exc.__cause__)}, status_code=400)
        return await http_exception_handler(request, exc)

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.error("event store unavailable: %s", exc)
        return JSONResponse({"detail": f"event store unavailable: {exc}"}, status_code=503)


def _unparsable_body(cause: BaseException | None) -> str:
    """Why a body that FastAPI could not decode was refused (FastAPI raises its 400 from the
    decoder's exception)."""
    if isinstance(cause, RecursionError):
        return "body: JSON nested too deeply"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        # Python refuses to convert integers of more than 4,300 digits (sys.int_info).
        return "body: a JSON number has too many digits"
    return "body: not valid JSON text (UTF-8)"
