"""Shared bench plumbing: machine facts and writing one section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every figure below was measured on this project's machine with the command shown.\n"
)


def machine() -> str:
    return (
        f"{platform.node() or 'host'}: {os.cpu_count()} cores, Python {platform.python_version()}"
    )


def write_section(title: str, body: str, *, owned: str | None = None) -> None:
    """Replace (or append) the `## title` section of docs/benchmarks.md.

    With `owned` (a regex for the `### ` headings this writer makes), the section's
    other `### ` subsections — another bench's or a hand-written one — are kept, after
    `body`; without it the whole section is replaced."""
    text = DOC.read_text() if DOC.exists() else HEADER
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    found = pattern.search(text)
    kept = []
    if found and owned is not None:
        for sub in re.finditer(r"^### (.*?)\n.*?(?=^### |\Z)", found.group(0), re.S | re.M):
            if not re.match(owned, sub.group(1)):
                kept.append(sub.group(0).strip())
    section = f"## {title}\n\n" + "\n\n".join([body.strip(), *kept]) + "\n"
    if found:
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text.rstrip() + "\n")


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
