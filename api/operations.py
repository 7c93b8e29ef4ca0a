"""The webhook's core, shared by every route that lets an external service finish an operation.

    check_api_key(settings, request.headers.get("X-API-Key"))
    await accept_completion(runtime, operation_id, completion)

Used by ``POST /v1/operations/{operation_id}/complete`` and the chat dialect's
``POST /api/chat/operations/{operation_id}/complete``. The webhook does not apply
anything itself: it publishes the same message an external service would put on
`operation.complete` (confirmed), so the completion consumer is the one code path
that applies results, and a repeat is deduplicated there like a repeated message.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from api.errors import Unauthorized, WebhookDisabled
from shared.errors import NotFound
from shared.models import OperationCompleteMessage, valid_id
from shared.runtime import Runtime
from shared.settings import Settings

MAX_ERROR_CHARS = 10_000


class Completion(BaseModel):
    """Body of the completion webhook."""

    model_config = ConfigDict(extra="ignore")

    success: StrictBool
    result: dict[str, Any] | list[Any] | str | int | float | None = None
    error: str | None = Field(default=None, max_length=MAX_ERROR_CHARS)


def check_api_key(settings: Settings, provided: str | None) -> None:
    """Raise `WebhookDisabled` (503) or `Unauthorized` (401) unless `provided` is the key."""
    if settings.internal_api_key is None or not settings.internal_api_key.get_secret_value():
        raise WebhookDisabled("the operations webhook is disabled: no internal API key is set")
    expected = settings.internal_api_key.get_secret_value().encode()
    if provided is None or not hmac.compare_digest(provided.encode(), expected):
        raise Unauthorized("missing or wrong X-API-Key")


async def accept_completion(
    runtime: Runtime, operation_id: str, completion: Completion
) -> dict[str, str]:
    """Publish the completion of a known operation; `NotFound` (404) for an unknown one.

    Returns the 200 body. A completion already applied (or for a run that ended) is
    not published again: the answer is the same and nothing changes.
    """
    op = await runtime.store.get_operation(operation_id) if valid_id(operation_id) else None
    if op is None:
        raise NotFound(f"operation {operation_id} not found")
    record = await runtime.store.get_run(op.task_id)
    done = record is not None and (record.terminal or record.applied(operation_id))
    if not done:
        message = OperationCompleteMessage(
            operation_id=operation_id,
            task_id=op.task_id,
            success=completion.success,
            result=completion.result,
            error=completion.error,
        )
        await runtime.broker.publish_completion(orjson.dumps(message.model_dump()))
    return {"status": "accepted"}
