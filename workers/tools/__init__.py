"""Tools a worker can run: the registry and the built-ins (`story`, `countdown`, `llm`).

User tools live in any importable module named in ``RUNRELAY_TOOLS`` and register
with the `tool` decorator (see `workers.tools.registry`).
"""

from workers.tools.registry import Tool, get_tool, load_tool_modules, tool, tool_names, tool_specs

__all__ = ["Tool", "get_tool", "load_tool_modules", "tool", "tool_names", "tool_specs"]
