"""``GET /v1/tools``: the tools runs may name, with the JSON Schema of their input."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import Owner, State
from api.openapi import errors

router = APIRouter(prefix="/v1", tags=["tools"])


class ToolInfo(BaseModel):
    name: str
    description: str = Field(description="the tool's docstring")
    input_schema: dict[str, Any] = Field(description="JSON Schema of the tool's input")
    last_seen: float = Field(description="when a worker last advertised it (unix time)")


class ToolList(BaseModel):
    tools: list[ToolInfo] = Field(description="by name")


@router.get("/tools", response_model=ToolList, responses=errors(401, 503))
async def list_tools(state: State, owner: Owner) -> dict[str, Any]:
    """The tools live workers serve (or served within the last few minutes), by name."""
    return {"tools": await state.tools.list()}
