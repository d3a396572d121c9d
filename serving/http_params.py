"""Path and query parameter types of the HTTP API (:mod:`serving.http`).

User and item IDs follow :data:`serving.schemas.ID_RULE`, ``k`` is capped at
:data:`serving.schemas.MAX_K`, and a list parameter is repeated or comma-separated (read by
:func:`split_values`).
"""

from typing import Annotated

from fastapi import Path as PathParam
from fastapi import Query
from pydantic import AfterValidator

from serving.schemas import ID_RULE, MAX_K, check_id
from towers.tables import MAX_ID_LENGTH

_ID_PATH = PathParam(min_length=1, max_length=MAX_ID_LENGTH, description=ID_RULE)
UserId = Annotated[str, _ID_PATH, AfterValidator(check_id)]
ItemId = Annotated[str, _ID_PATH, AfterValidator(check_id)]
K = Annotated[int, Query(ge=1, le=MAX_K, description=f"how many items (1..{MAX_K})")]
ListParam = Annotated[
    list[Annotated[str, Query(max_length=MAX_ID_LENGTH, pattern=r"^[^\x00-\x1f\x7f]*$")]],
    Query(max_length=1000, description="repeat the parameter, or separate values by commas"),
]


def split_values(values: list[str]) -> list[str]:
    """A list parameter's values: each repeat split at commas, stripped, empty ones left out."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]
