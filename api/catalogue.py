"""The tools runs may name: what workers advertised recently, and their input schemas.

Workers advertise their tools with every heartbeat (`WorkerRegistry.advertise_tools`). A tool
stays known for `TOOL_MEMORY_S` after the last advertisement, so a worker restart
(none live for a few seconds) does not turn runs away: they wait in the queue for the
new worker as they always did. A tool no worker has served for that long is refused.

Input is checked against the JSON Schema the worker published, not the pydantic model
(the API does not import tool modules): what the schema cannot say, such as a model
validator across fields, is still checked on the worker, which fails the run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
from jsonschema import ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from shared.errors import InvalidInput, UnknownTool
from shared.eventlog.base import WorkerRegistry

TOOL_MEMORY_S = 300.0
# How long one read of the catalogue answers creates: creating runs must not add a Redis
# round trip each. A tool missing from it is looked up again before it is refused.
_FRESH_S = 2.0


class ToolCatalogue:
    def __init__(self, workers: WorkerRegistry, *, memory_s: float = TOOL_MEMORY_S) -> None:
        self._workers = workers
        self.memory_s = memory_s
        self._tools: dict[str, dict[str, Any]] = {}
        self._read_at = float("-inf")
        self._validators: dict[bytes, Validator] = {}

    async def list(self) -> list[dict[str, Any]]:
        """The known tools, read now: name, description, input_schema, last_seen."""
        tools = await self._workers.list_tools(since=time.time() - self.memory_s)
        self._tools = {t["name"]: t for t in tools}
        self._read_at = time.monotonic()
        return tools

    async def check(self, tool: str, input: Mapping[str, Any]) -> None:
        """Raise `UnknownTool` (field ``tool``) or `InvalidInput` (field ``input.<path>``)."""
        spec = self._tools.get(tool) if time.monotonic() - self._read_at < _FRESH_S else None
        if spec is None:
            await self.list()
            spec = self._tools.get(tool)
        if spec is None:
            known = ", ".join(sorted(self._tools)) or "none (no worker advertised any)"
            raise UnknownTool(f"unknown tool {tool!r}; known tools: {known}", "tool")
        errors = sorted(self._validator(spec).iter_errors(input), key=_error_order)
        if errors:
            fields = [_field(e) for e in errors]
            message = "; ".join(f"{f}: {e.message}" for f, e in zip(fields, errors, strict=True))
            raise InvalidInput(message, fields[0])

    def _validator(self, spec: Mapping[str, Any]) -> Validator:
        schema = spec.get("input_schema") or {}
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
        validator = self._validators.get(key)
        if validator is None:
            validator = self._validators[key] = validator_for(schema)(schema)
        return validator


def _error_order(error: ValidationError) -> list[str]:
    return [str(p) for p in error.absolute_path]


def _field(error: ValidationError) -> str:
    path = [str(p) for p in error.absolute_path]
    required = error.validator_value
    if error.validator == "required" and isinstance(error.instance, Mapping):
        # Reported at the parent object: name the missing property itself.
        missing = (
            [p for p in required if p not in error.instance] if isinstance(required, list) else []
        )
        path += missing[:1]
    return ".".join(["input", *path])
