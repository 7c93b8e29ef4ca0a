"""`runrelay api`: the API process on uvicorn (uvloop + httptools).

serve(load_settings(), "127.0.0.1", 8000)   # blocks until SIGTERM/SIGINT
"""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.deps import ApiState
from shared import tracing
from shared.errors import ConfigError, RunRelayError
from shared.runtime import Runtime
from shared.settings import Settings

log = logging.getLogger(__name__)

# Streams end at shutdown by themselves (the hub drains them); this only bounds a
# response that is stuck writing to a client that reads nothing.
_GRACEFUL_S = 10
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# An API process holds many long-lived objects (connections, streams, parsed pages), and
# CPython's default young-generation threshold (700 allocations) makes the collector
# rescan them all the time: half the process's CPU in a resume storm. Objects made at
# startup are frozen out of the scans, and collections run per 50,000 allocations.
_GC_THRESHOLDS = (50_000, 20, 100)


class Server(uvicorn.Server):
    """uvicorn that ends open event streams first when asked to stop.

    uvicorn waits for open responses before running the lifespan shutdown, and an
    SSE response is open until its run ends: so the hub is drained here, first, and
    every stream closes at its next event boundary (clients reconnect elsewhere).
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state: ApiState = self._app.state.api
        state.hub.drain()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, minus re-raising the signal once drained.

        uvicorn (0.29+) re-raises a captured SIGTERM after a graceful shutdown, so the
        process dies of it (exit -15) and process managers count a crash. A drained
        API exits 0 instead (SPEC §1). This leans on uvicorn's `_captured_signals`;
        tests/faults/test_exit.py fails if an upgrade changes that.
        """
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


def check_auth(settings: Settings) -> None:
    """`runrelay api` never runs open by accident."""
    if settings.token_owners() or settings.jwt_secret is not None:
        return
    if not settings.allow_anonymous:
        raise ConfigError(
            "no authentication configured: set RUNRELAY_API_TOKENS (token:owner,...) or "
            "RUNRELAY_JWT_SECRET, or RUNRELAY_ALLOW_ANONYMOUS=1 to run open on purpose"
        )
    log.warning("RUNRELAY_ALLOW_ANONYMOUS=1: the API is open; every caller is 'anonymous'")


def build_server(app: FastAPI, host: str, port: int, *, log_level: str = "info") -> Server:
    """The uvicorn server `serve` runs; `runrelay dev` may use it for its own app."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        access_log=False,  # api.middleware.AccessLog logs instead, with tokens redacted
        log_level=log_level,
        timeout_graceful_shutdown=_GRACEFUL_S,
        proxy_headers=False,
    )
    return Server(config, app)


def tune_gc() -> None:
    """Collector settings for a streaming server; call once, after the app is built."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the API until SIGTERM/SIGINT; `ConfigError` or `BackendUnavailable` if it cannot."""
    runtime = Runtime.build(settings)
    check_auth(settings)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)
    tracing.configure("runrelay-api")
    app = create_app(runtime, allow_open=settings.allow_anonymous)
    server = build_server(app, host, port)
    tune_gc()
    server.run()
    startup_error: RunRelayError | None = app.state.startup_error
    if startup_error is not None:
        raise startup_error
    if not server.started:
        raise RunRelayError(f"the API did not start on {host}:{port} (see the log above)")
