"""The completion webhook for external services (SPEC §4); the logic is in `api.operations`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header

from api.deps import State
from api.openapi import errors
from api.operations import Completion, accept_completion, check_api_key

router = APIRouter(prefix="/v1/operations", tags=["operations"])


async def internal_caller(
    state: State, x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None
) -> None:
    # A dependency, so the key is checked before the body is validated: no 422 for strangers.
    check_api_key(state.runtime.settings, x_api_key)


@router.post(
    "/{operation_id}/complete",
    dependencies=[Depends(internal_caller)],
    responses=errors(400, 401, 404, 413, 422, 503),
)
async def complete_operation(operation_id: str, body: Completion, state: State) -> dict[str, str]:
    """Report the result of a delegated operation: 200 once accepted (a repeat changes nothing).

    Header ``X-API-Key``. 503 when no internal API key is configured, 401 on a
    missing or wrong key, 404 for an unknown operation, 422 naming a bad field.
    """
    return await accept_completion(state.runtime, operation_id, body)
