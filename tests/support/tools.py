"""Make the built-in tools known to an API that has no worker yet, as a worker would."""

from __future__ import annotations

import time

from shared.runtime import Runtime
from shared.settings import Settings
from workers.tools import load_tool_modules, tool_specs


async def advertise_builtin_tools(settings: Settings) -> None:
    """Record the built-in tools as advertised now, on the backends of `settings`."""
    load_tool_modules()
    runtime = Runtime.build(settings)
    try:
        await runtime.workers.advertise_tools(tool_specs(), time.time())
    finally:
        await runtime.log.close()
