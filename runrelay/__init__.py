"""runrelay: the Python SDK and the CLI.

from runrelay import RunRelay, MessageDelta

async with RunRelay("http://127.0.0.1:8000", token="...") as client:
    run = await client.runs.create("story", {"prompt": "a lighthouse"})
    async for event in client.events.stream(run_id=run.run_id):
        if isinstance(event, MessageDelta):
            print(event.data.delta, end="")
"""

from runrelay.client import Events, Run, RunRelay, Runs, backoff_delay
from runrelay.errors import (
    APIConnectionError,
    APIError,
    AuthError,
    BadRequestError,
    ConflictError,
    EventParseError,
    NotFoundError,
    RunRelayClientError,
    ServerError,
    StreamError,
)
from runrelay.events import (
    TERMINAL_TYPES,
    AnyEvent,
    BaseEvent,
    Event,
    MessageCompleted,
    MessageDelta,
    OperationAccepted,
    OperationCompleted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunQueued,
    RunRetrying,
    RunStarted,
    StreamGap,
    ToolCompleted,
    ToolProgress,
    ToolStarted,
    parse_event,
)

__version__ = "0.1.0"

__all__ = [
    "TERMINAL_TYPES",
    "APIConnectionError",
    "APIError",
    "AnyEvent",
    "AuthError",
    "BadRequestError",
    "BaseEvent",
    "ConflictError",
    "Event",
    "EventParseError",
    "Events",
    "MessageCompleted",
    "MessageDelta",
    "NotFoundError",
    "OperationAccepted",
    "OperationCompleted",
    "Run",
    "RunCancelled",
    "RunCompleted",
    "RunFailed",
    "RunQueued",
    "RunRelay",
    "RunRelayClientError",
    "RunRetrying",
    "RunStarted",
    "Runs",
    "ServerError",
    "StreamError",
    "StreamGap",
    "ToolCompleted",
    "ToolProgress",
    "ToolStarted",
    "__version__",
    "backoff_delay",
    "parse_event",
]
