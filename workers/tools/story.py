"""`story`: deterministic multi-paragraph text streamed in small deltas; needs no model.

The same prompt always gives the same story, so tests and demos can compare text.
"""

from __future__ import annotations

import asyncio
import hashlib
import random

from pydantic import BaseModel, Field

from workers.context import RunContext
from workers.tools.registry import tool

_WORDS_PER_DELTA = 4
_SUBJECTS = ("the relay", "a quiet worker", "the old lighthouse", "a patient client", "the river")
_VERBS = ("carried", "remembered", "followed", "waited for", "answered", "wrote down")
_OBJECTS = (
    "every message",
    "the last event id",
    "a lantern of words",
    "the distant stream",
    "a promise kept",
    "the morning queue",
)
_ENDINGS = ("until dawn", "without losing a word", "one piece at a time", "and never gave up")


class StoryInput(BaseModel):
    prompt: str = Field(max_length=10_000, description="what the story is about")
    paragraphs: int = Field(default=3, ge=1, le=50, description="how many paragraphs")
    delay_ms: int = Field(default=30, ge=0, le=5000, description="pause after each delta")


def compose(prompt: str, paragraphs: int) -> list[str]:
    """The story's paragraphs: a pure function of the prompt and the paragraph count."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    out = []
    for index in range(paragraphs):
        sentences = [f"Once, {prompt.strip() or 'somewhere'}."] if index == 0 else []
        for _ in range(3):
            sentences.append(
                f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} "
                f"{rng.choice(_OBJECTS)} {rng.choice(_ENDINGS)}."
            )
        if index > 0:
            sentences[0] = f"Then {sentences[0]}"  # "Then a patient client ...", in lower case
        out.append(" ".join(s[0].upper() + s[1:] for s in sentences))
    return out


def pieces(paragraphs: list[str]) -> list[str]:
    """The deltas: a few words each, paragraphs separated by a blank line."""
    out: list[str] = []
    for index, paragraph in enumerate(paragraphs):
        words = paragraph.split(" ")
        for start in range(0, len(words), _WORDS_PER_DELTA):
            chunk = " ".join(words[start : start + _WORDS_PER_DELTA])
            last = start + _WORDS_PER_DELTA >= len(words)
            out.append(chunk + ("" if last else " "))
        if index < len(paragraphs) - 1:
            out.append("\n\n")
    return out


@tool("story", StoryInput)
async def story(ctx: RunContext, args: StoryInput) -> None:
    """A deterministic story about the prompt, streamed a few words at a time (no model)."""
    for delta in pieces(compose(args.prompt, args.paragraphs)):
        await ctx.text(delta)
        if args.delay_ms:
            await asyncio.sleep(args.delay_ms / 1000)
    await ctx.complete_message()
