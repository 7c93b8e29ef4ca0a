"""What route handlers receive from the app: the runtime, the hub, the caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from api.auth import Authenticator
from api.catalogue import ToolCatalogue
from api.errors import Forbidden
from api.streams import StreamSlots
from api.tail import TailHub
from shared.runtime import Runtime


@dataclass
class ApiState:
    """Process-wide state of one app, at ``app.state.api``."""

    runtime: Runtime
    hub: TailHub
    auth: Authenticator
    slots: StreamSlots
    tools: ToolCatalogue


def _state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


# Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in its
# thread pool, a thread hop per request (11% of the server's time in a resume storm).
async def api_state(request: Request) -> ApiState:
    return _state(request)


async def caller(request: Request) -> str:
    """The owner behind the request's credentials (401 otherwise)."""
    return _state(request).auth.owner_of(request)


async def operator(request: Request) -> str:
    """The caller, if RUNRELAY_ADMIN_OWNERS lists them (anyone in open mode); 403 otherwise."""
    state = _state(request)
    owner = state.auth.owner_of(request)
    if not state.auth.open and owner not in state.runtime.settings.admin_owners:
        raise Forbidden(f"{owner!r} is not an operator: list it in RUNRELAY_ADMIN_OWNERS")
    return owner


State = Annotated[ApiState, Depends(api_state)]
Owner = Annotated[str, Depends(caller)]
Operator = Annotated[str, Depends(operator)]
