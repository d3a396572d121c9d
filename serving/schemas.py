"""Request and response bodies of the HTTP API (pydantic), so that FastAPI validates input,
answers bad input with a 422 whose ``detail`` names the field, and publishes the OpenAPI schema.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    field_validator,
)

from towers.tables import MAX_ID_LENGTH, MAX_TIMESTAMP

MAX_K = 500  # largest k a request may ask for
MAX_EVENTS = 1000  # largest event batch
MAX_LIST = 1000  # largest history / exclude list in a body

# Header values (the idempotency key): no control characters (PostgreSQL cannot store NUL, and
# logs must not be forged with newlines).
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
ID_RULE = f"1 to {MAX_ID_LENGTH} printable characters, with no leading or trailing whitespace"
NEW_ID_RULE = ID_RULE + ", with no '/' or ',', and not '.' or '..'"


def check_id(value: str) -> str:
    """An ID as stored: printable (no control, format or separator characters: ``str.isprintable``)
    and without surrounding whitespace, so that ``"alice "`` cannot become a second Alice.

    Raises
    ------
    ValueError
        Naming the rule, for pydantic to report against the field.
    """
    if not value.isprintable() or value.strip() != value:
        raise ValueError(f"must be {ID_RULE}, got {value!r}")
    return value


def check_new_id(value: str) -> str:
    """:func:`check_id`, for an ID the service creates (a user, an added item), and one that every
    URL can carry: no ``/``, since ``%2F`` is decoded before routing (``B%2Fsimilar`` would reach
    B's similar items); not ``.`` or ``..``, which clients and browsers remove from a path (even
    as ``%2E``), so ``/v1/users/./recommendations`` would ask for another resource; and no ``,``,
    which separates the values of a query list (``?exclude=a,b``). IDs that refer to trained
    catalogue items may contain any of these (a catalogue is the user's own data)."""
    if (
        not value.isprintable()
        or value.strip() != value
        or "/" in value
        or "," in value
        or value in (".", "..")
    ):
        raise ValueError(f"must be {NEW_ID_RULE}, got {value!r}")
    return value


Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH),
    AfterValidator(check_id),
    Field(description=f"an ID: {ID_RULE}"),
]
NewIdentifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH),
    AfterValidator(check_new_id),
    Field(description=f"an ID: {NEW_ID_RULE}"),
]
Label = Annotated[str, StringConstraints(max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")]


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """Every 4xx/5xx body: ``detail`` names the field and the problem."""

    detail: str
    errors: list[FieldError] | None = None


class Strict(BaseModel):
    # No coercion: "rank": 0 or "k": "10" are type errors, as the schema says.
    model_config = ConfigDict(extra="forbid", strict=True)


class Features(Strict):
    """User features the model reads (all optional)."""

    age: float | None = Field(None, ge=0, le=130, allow_inf_nan=False)
    gender: Label | None = None
    occupation: Label | None = None
    zip_prefix: Label | None = None


class EventIn(Strict):
    """One rating or watch."""

    user_id: NewIdentifier  # an event's user is created if new
    item_id: Identifier  # a catalogue item
    type: Literal["rating", "watch"] = "rating"
    rating: float | None = Field(
        None, allow_inf_nan=False, description="required for a rating, absent for a watch"
    )
    timestamp: float | str | None = Field(
        None,
        description="seconds since the epoch, or ISO 8601 text (UTC if no offset); "
        "default: the server's clock",
    )

    @field_validator("timestamp")
    @classmethod
    def _epoch(cls, value: float | str | None) -> float | None:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                when = datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an ISO 8601 time") from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            value = when.timestamp()
        if not math.isfinite(value) or not 0 <= value <= MAX_TIMESTAMP:
            raise ValueError(f"must be seconds since the epoch in [0, {MAX_TIMESTAMP:g}]")
        return float(value)


class EventBatch(Strict):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS)


def _event_shape(body: object) -> str:
    """``batch`` for a body with an ``events`` key, else ``event``: a bad body is reported
    against the shape it was meant to have, not against both."""
    if isinstance(body, dict):
        return "batch" if "events" in body else "event"
    return "batch" if hasattr(body, "events") else "event"


EventBody = Annotated[
    Annotated[EventIn, Tag("event")] | Annotated[EventBatch, Tag("batch")],
    Discriminator(_event_shape),
]
EVENT_SHAPES = ("event", "batch")  # the tags, which error locations leave out


class EventsAccepted(BaseModel):
    accepted: int
    sequence_numbers: list[int]
    replayed: bool = Field(description="true: this idempotency key was already stored")


class UserIn(Features):
    user_id: NewIdentifier | None = Field(None, description="default: a new random ID")


class UserOut(BaseModel):
    user_id: str
    age: float | None = None
    gender: str | None = None
    occupation: str | None = None
    zip_prefix: str | None = None
    created_at: float | None = None
    events: int
    history_length: int
    rating_mean: float | None = None
    recent: list[str] = Field(description="the latest distinct items, newest first (up to 20)")


class RecommendationRequest(Strict):
    history: list[Identifier] = Field(default_factory=list, max_length=MAX_LIST)
    features: Features = Field(default_factory=Features)
    k: int = Field(10, ge=1, le=MAX_K)
    exclude: list[Identifier] = Field(default_factory=list, max_length=MAX_LIST)
    genres: list[Label] = Field(default_factory=list, max_length=50)
    rank: bool = True


class Because(BaseModel):
    item_id: str
    title: str


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    genres: list[str]
    score: float | None
    because: Because | None = Field(description="the watched item that contributed most")


class RecommendationsOut(BaseModel):
    user_id: str | None
    model_version: str
    ranked: bool
    generator: str = Field(
        description='the tower that found the candidates: "new-user" for a history of at most '
        'new_user_tower.max_ratings known items (GET /v1/model), else "main"'
    )
    history_length: int
    events: int | None
    ignored_history: list[str]
    items: list[RecommendedItem]


class ItemOut(BaseModel):
    item_id: str
    title: str
    genres: list[str]
    year: int | None
    popularity: float


class ItemIn(Strict):
    item_id: NewIdentifier
    title: str = Field(
        min_length=1, max_length=300, pattern=r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$"
    )
    genres: list[Annotated[Label, StringConstraints(min_length=1)]] = Field(
        default_factory=list, max_length=20
    )
    year: int | None = Field(None, ge=1800, le=2200)
    tags: list[Annotated[Label, StringConstraints(min_length=1)]] = Field(
        default_factory=list, max_length=100
    )


class ItemAdded(ItemOut):
    created: bool = Field(description="false: an added item's metadata was replaced")
    model_version: str
    sequence: int = Field(description="the store's item sequence number of this upsert")
    known_tokens: list[str] = Field(description="the metadata tokens the projection used")


class OnboardingOut(BaseModel):
    model_version: str
    items: list[ItemOut]


class SimilarOut(BaseModel):
    item_id: str
    model_version: str
    items: list[RecommendedItem]


class NewUserTowerOut(BaseModel):
    max_ratings: int = Field(description="histories of at most this many known items go to it")
    items: int
    ranker: Literal["own", "main"] | None = Field(
        default=None,
        description='the ranker of its candidates: "own" (trained on new users\' impressions), '
        '"main" (the main tower\'s) or null (none: its own order)',
    )


class ModelOut(BaseModel):
    version: str
    artefact: str
    trained_at: str | None
    loaded_at: float
    items: int
    ranker: bool
    index: str
    new_user_tower: NewUserTowerOut | None = Field(
        None, description="the second tower that answers users with few ratings, if any"
    )
    swaps: int
    metrics: dict[str, float | int | str | bool | None]


class ReloadIn(Strict):
    artefact: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="artefact directory; default: the registry's current",
    )


class ReloadOut(BaseModel):
    previous: str
    current: str
    artefact: str


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


__all__ = [
    "EVENT_SHAPES",
    "ID_PATTERN",
    "ID_RULE",
    "EventBody",
    "check_id",
    "check_new_id",
    "FieldError",
    "Problem",
    "MAX_EVENTS",
    "MAX_K",
    "EventBatch",
    "EventIn",
    "EventsAccepted",
    "Features",
    "Health",
    "ItemAdded",
    "ItemIn",
    "ItemOut",
    "ModelOut",
    "OnboardingOut",
    "RecommendationRequest",
    "RecommendationsOut",
    "ReloadIn",
    "ReloadOut",
    "SimilarOut",
    "UserIn",
    "UserOut",
]
