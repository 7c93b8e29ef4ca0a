"""HTTP-only errors of the API process; everything else comes from `shared.errors`.

They extend the one root (`RunRelayError`) so the same handler renders them:

RunRelayError
├── Unauthorized       401: no or bad credentials
├── Forbidden          403: an operator route, and the owner is not in RUNRELAY_ADMIN_OWNERS
├── PayloadTooLarge    413: body over RUNRELAY_MAX_BODY_BYTES
├── TooManyStreams     429: the owner has RUNRELAY_MAX_STREAMS_PER_OWNER streams open
└── WebhookDisabled    503: no RUNRELAY_INTERNAL_API_KEY, so the operations webhook is off
"""

from __future__ import annotations

from shared.errors import RunRelayError


class Unauthorized(RunRelayError):
    code = "unauthorized"
    status = 401


class Forbidden(RunRelayError):
    code = "forbidden"
    status = 403


class PayloadTooLarge(RunRelayError):
    code = "payload_too_large"
    status = 413


class TooManyStreams(RunRelayError):
    code = "too_many_streams"
    status = 429


class WebhookDisabled(RunRelayError):
    """503: no ``RUNRELAY_INTERNAL_API_KEY`` (or ``CHAT_INTERNAL_API_KEY``) is configured."""

    code = "webhook_disabled"
    status = 503
