"""The HTTP API's item endpoints: title search, adding an item from its metadata, the onboarding
list, one item, and similar items.

:func:`add_item_routes` adds them to the app of :func:`serving.http.create_app`.
"""

import math
from typing import Annotated

from fastapi import FastAPI, HTTPException, Query, Response, params

from serving.api_types import UnknownItemError
from serving.http_params import ItemId, K
from serving.schemas import ItemAdded, ItemIn, ItemOut, OnboardingOut, SimilarOut
from serving.served import (
    ONBOARDING_DIVERSITY,
    ONBOARDING_DIVERSITY_NEW_USER,
    ONBOARDING_LENGTH,
    ONBOARDING_LENGTH_NEW_USER,
    ONBOARDING_MAX,
)
from serving.service import LiveService, NewItemsUnsupported
from serving.store import ItemRecord
from towers.content import metadata_tokens


def add_item_routes(app: FastAPI, service: LiveService, admin: params.Depends) -> None:
    """Add the item endpoints to ``app``, answering from ``service``; ``admin`` is the dependency
    that checks the admin key (adding an item needs it)."""

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
        dependencies=[admin],
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
        n: Annotated[
            int | None,
            Query(
                ge=1,
                le=ONBOARDING_MAX,
                description=f"how many items; default: {ONBOARDING_LENGTH_NEW_USER} for a model "
                f"with a new-user tower (its validated pick), else {ONBOARDING_LENGTH}",
            ),
        ] = None,
        diversity: Annotated[
            float | None,
            Query(
                ge=0,
                le=1,
                description="0: most popular first; 1: most spread out; rounded to two "
                "decimals; default: "
                f"{ONBOARDING_DIVERSITY_NEW_USER} for a model with a new-user tower (its "
                f"validated pick), else {ONBOARDING_DIVERSITY}",
            ),
        ] = None,
    ) -> dict:
        """Items to ask a new user to rate first, in asking order: well known, and spread across
        the item space, so that a few ratings tell the model much about the user. A client goes
        down the list (the page shows it a page at a time) until the user has rated five."""
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
