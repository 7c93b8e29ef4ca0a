"""Durable Streams wire rules as pure functions: offsets, cursors, headers, bodies, SSE frames.

Offsets are ``0000000000000000_<seq>``: the sequence number of the last message
before the position, zero-padded so that offsets sort as strings in stream order
(the first half is always zero; it keeps the reference server's shape, which
clients and the conformance suite use for "the start": all zeros).
"""

from __future__ import annotations

import base64
import random
import re
import time
from datetime import datetime

import orjson

from shared.eventlog.streams import media_type

NEXT_OFFSET = "Stream-Next-Offset"
UP_TO_DATE = "Stream-Up-To-Date"
CLOSED = "Stream-Closed"
CURSOR = "Stream-Cursor"
MAX_SAFE_INT = 2**53 - 1

_OFFSET = re.compile(r"\d{16}_\d{16}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
# Cursor intervals: 20 s counted from 2024-10-09T00:00:00Z, as PROTOCOL.md §8.1 says.
_CURSOR_EPOCH_S = 1728432000
_CURSOR_INTERVAL_S = 20

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": ", ".join(
        [
            NEXT_OFFSET,
            UP_TO_DATE,
            CLOSED,
            CURSOR,
            "Stream-TTL",
            "Stream-Expires-At",
            "Stream-SSE-Data-Encoding",
            "Producer-Epoch",
            "Producer-Seq",
            "Producer-Expected-Seq",
            "Producer-Received-Seq",
            "ETag",
            "Location",
        ]
    ),
}
PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "GET, HEAD, PUT, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": ", ".join(
        [
            "Authorization",
            "Content-Type",
            "If-None-Match",
            "Stream-Seq",
            "Stream-TTL",
            "Stream-Expires-At",
            "Stream-Closed",
            "Stream-Forked-From",
            "Stream-Fork-Offset",
            "Stream-Fork-Sub-Offset",
            "Producer-Id",
            "Producer-Epoch",
            "Producer-Seq",
        ]
    ),
    "Access-Control-Max-Age": "86400",
}


class ProtocolError(Exception):
    """A request the protocol refuses, with the status it prescribes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def offset(seq: int) -> str:
    return f"{0:016d}_{seq:016d}"


def parse_offset(raw: str) -> int:
    """An offset this server issued -> its sequence number; 400 for anything else."""
    if raw == "-1":
        return 0
    if not _OFFSET.fullmatch(raw):
        raise ProtocolError(400, f"malformed offset {raw[:64]!r}")
    return int(raw[17:])


def decimal(raw: str, name: str, limit: int = MAX_SAFE_INT) -> int:
    """A non-negative decimal without sign, leading zeros, point or exponent (else 400)."""
    if not _DECIMAL.fullmatch(raw) or int(raw) > limit:
        raise ProtocolError(400, f"{name} must be a non-negative integer, got {raw[:32]!r}")
    return int(raw)


def expires_ms(raw: str) -> int:
    """RFC 3339 -> unix ms (400 when malformed or without a zone)."""
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ProtocolError(400, f"Stream-Expires-At is not RFC 3339: {raw[:64]!r}") from None
    if at.tzinfo is None:
        raise ProtocolError(400, "Stream-Expires-At needs a time zone")
    return int(at.timestamp() * 1000)


def cursor(client: str | None) -> str:
    """The live-response cursor: the current interval, always past the client's (§8.1)."""
    now = (int(time.time()) - _CURSOR_EPOCH_S) // _CURSOR_INTERVAL_S
    if client is not None and client.isdigit() and int(client) >= now:
        # Jitter of 1-3600 s in whole intervals, so collapsed clients spread out again.
        return str(int(client) + random.randint(1, 3600 // _CURSOR_INTERVAL_S))
    return str(now)


def is_json(content_type: str) -> bool:
    return media_type(content_type) == "application/json"


def is_text(content_type: str) -> bool:
    """Served as text in SSE; every other type goes base64 (Stream-SSE-Data-Encoding)."""
    media = media_type(content_type)
    return media.startswith("text/") or media == "application/json" or media.endswith("+json")


def json_messages(body: bytes, *, allow_empty: bool) -> list[bytes]:
    """A JSON body -> its messages: an array is flattened one level (§7.1)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProtocolError(400, "body is not valid JSON") from None
    if not isinstance(value, list):
        return [orjson.dumps(value)]
    if not value and not allow_empty:
        raise ProtocolError(400, "an empty JSON array appends nothing")
    try:
        return [orjson.dumps(item) for item in value]
    except orjson.JSONEncodeError as exc:
        raise ProtocolError(400, f"JSON cannot be stored: {exc}") from None


def body_of(content_type: str, messages: list[bytes]) -> bytes:
    """Messages as one response body: JSON mode answers an array, bytes are concatenated."""
    if is_json(content_type):
        return b"[" + b",".join(messages) + b"]"
    return b"".join(messages)


_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def sse_data(content_type: str, messages: list[bytes]) -> bytes:
    """One ``data`` event; every line break of the payload starts a new ``data:`` line,
    so a payload can never end the event early or forge another one."""
    if is_text(content_type):
        payload = body_of(content_type, messages)
        lines = _LINE_BREAK.split(payload)
    else:
        lines = [base64.b64encode(b"".join(messages))]
    return b"event: data\n" + b"".join(b"data:" + line + b"\n" for line in lines) + b"\n"


def sse_control(next_offset: int, cursor_value: str, *, up_to_date: bool, closed: bool) -> bytes:
    control: dict[str, object] = {"streamNextOffset": offset(next_offset)}
    if closed:
        control["streamClosed"] = True  # a closed stream has no future: no cursor
    else:
        control["streamCursor"] = cursor_value
    if up_to_date:
        control["upToDate"] = True
    return b"event: control\ndata:" + orjson.dumps(control) + b"\n\n"
