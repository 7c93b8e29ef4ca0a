"""The one exception root of runrelay, branched by who must react.

RunRelayError
├── ConfigError            operator: a setting is wrong; the process stops
├── BackendUnavailable     operator/client: Redis or RabbitMQ unreachable (503)
├── NotFound               client: unknown run/session/operation, or not theirs (404)
├── Conflict               client: the request clashes with the run's state (409)
│   └── AppendRefused      producer: the run already ended, or a transition is illegal
├── BadRequest             client: invalid input, naming the field (400/422)
│   ├── BadCursor          client: unknown, malformed or negative cursor (400)
│   └── InvalidInput       client: a run's input fails its tool's schema (422)
│       └── UnknownTool    client: no worker serves the tool (422)
├── PublishFailed          API: the broker did not confirm a publish (503)
└── TooManyRuns            client: RUNRELAY_MAX_ACTIVE_RUNS_PER_OWNER runs not ended (429)

The API adds its own branches in `api.errors`: Unauthorized (401), PayloadTooLarge
(413) and TooManyStreams (429).
"""

from __future__ import annotations


class RunRelayError(Exception):
    code = "internal_error"
    status = 500


class ConfigError(RunRelayError):
    code = "config_error"


class BackendUnavailable(RunRelayError):
    code = "backend_unavailable"
    status = 503


class NotFound(RunRelayError):
    code = "not_found"
    status = 404


class Conflict(RunRelayError):
    code = "conflict"
    status = 409


class AppendRefused(Conflict):
    """The event was not appended: the run is terminal or the transition is not allowed."""

    def __init__(self, run_id: str, status: str, wanted: str) -> None:
        super().__init__(f"run {run_id} is {status}; cannot append {wanted}")
        self.run_id = run_id
        self.run_status = status
        self.wanted = wanted


class BadRequest(RunRelayError):
    code = "bad_request"
    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BadCursor(BadRequest):
    code = "bad_cursor"


class InvalidInput(BadRequest):
    """A run's tool or input that the tool catalogue refuses (422 naming the field)."""

    code = "invalid_request"
    status = 422


class UnknownTool(InvalidInput):
    code = "unknown_tool"


class PublishFailed(RunRelayError):
    code = "publish_failed"
    status = 503


class TooManyRuns(RunRelayError):
    """The owner already has ``RUNRELAY_MAX_ACTIVE_RUNS_PER_OWNER`` runs that have not ended."""

    code = "too_many_runs"
    status = 429
