"""The tool registry: tools register by name with the pydantic model of their input.

    class EchoInput(BaseModel):
        text: str

    @tool("echo", EchoInput)
    async def echo(ctx: RunContext, args: EchoInput) -> None:
        await ctx.text(args.text)
        await ctx.complete_message()

A tool ends the run `completed` by returning and `failed` by raising (the
exception's message becomes the run's error). What clients see is what the
tool emits through the context; the return value is not recorded.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from shared.errors import ConfigError

if TYPE_CHECKING:
    from workers.context import RunContext

M = TypeVar("M", bound=BaseModel)
ToolFn = Callable[["RunContext", M], Awaitable[object]]

BUILTIN_MODULES = (
    "workers.tools.story",
    "workers.tools.countdown",
    "workers.tools.llm",
    "workers.tools.generate_agent",
)


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    input_model: type[BaseModel]
    fn: Callable[[RunContext, Any], Awaitable[object]]

    def spec(self) -> dict[str, Any]:
        """What workers advertise and ``GET /v1/tools`` lists: the docstring and input schema."""
        return {
            "name": self.name,
            "description": inspect.getdoc(self.fn) or "",
            "input_schema": self.input_model.model_json_schema(),
        }


_TOOLS: dict[str, Tool] = {}


def tool(name: str, input_model: type[M]) -> Callable[[ToolFn[M]], ToolFn[M]]:
    """Register the decorated coroutine function as tool `name` (a later one replaces it)."""

    def register(fn: ToolFn[M]) -> ToolFn[M]:
        _TOOLS[name] = Tool(name, input_model, fn)
        return fn

    return register


def get_tool(name: str) -> Tool | None:
    return _TOOLS.get(name)


def tool_names() -> list[str]:
    return sorted(_TOOLS)


def tool_specs() -> list[dict[str, Any]]:
    return [_TOOLS[name].spec() for name in tool_names()]


def load_tool_modules(modules: Iterable[str] = ()) -> None:
    """Import the built-in tools and each user module (``RUNRELAY_TOOLS``) so they register.

    Raises `ConfigError` naming RUNRELAY_TOOLS when a user module cannot be imported:
    a worker that would fail every run of that tool must not start.
    """
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import-time failure means the same to the operator
            raise ConfigError(
                f"RUNRELAY_TOOLS: cannot import tool module {module!r}: {type(exc).__name__}: {exc}"
            ) from exc
