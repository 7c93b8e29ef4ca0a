"""The SDK's public surface is explicit: ``__all__`` is exactly what users may import."""

from __future__ import annotations

import runrelay

INTENDED = {
    # client
    "RunRelay",
    "Runs",
    "Events",
    "Run",
    "backoff_delay",
    # errors
    "RunRelayClientError",
    "APIConnectionError",
    "APIError",
    "BadRequestError",
    "AuthError",
    "NotFoundError",
    "ConflictError",
    "ServerError",
    "StreamError",
    # events
    "AnyEvent",
    "BaseEvent",
    "Event",
    "EventParseError",
    "TERMINAL_TYPES",
    "parse_event",
    "RunQueued",
    "RunStarted",
    "MessageDelta",
    "MessageCompleted",
    "ToolStarted",
    "ToolProgress",
    "ToolCompleted",
    "OperationAccepted",
    "OperationCompleted",
    "RunRetrying",
    "RunCompleted",
    "RunFailed",
    "RunCancelled",
    "StreamGap",
    "__version__",
}


def test_all_is_the_intended_public_surface() -> None:
    assert set(runrelay.__all__) == INTENDED
    assert len(runrelay.__all__) == len(set(runrelay.__all__))


def test_every_name_in_all_is_importable() -> None:
    for name in runrelay.__all__:
        assert getattr(runrelay, name) is not None


def test_errors_form_one_tree() -> None:
    for name in runrelay.__all__:
        obj = getattr(runrelay, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, runrelay.RunRelayClientError)
    assert issubclass(runrelay.NotFoundError, runrelay.APIError)
