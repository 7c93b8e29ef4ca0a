"""`runrelay dev`: the whole system in one process, for a newcomer's first run.

    run_dev(load_settings(), "127.0.0.1", 8000)   # blocks until SIGTERM/SIGINT, then exit 0

API, worker, completion consumer and the example generator share one `Runtime`
and one event loop (uvloop). With no ``RUNRELAY_REDIS_URL`` / ``RUNRELAY_AMQP_URL``
the runtime is embedded: nothing to install, nothing survives the process. The
generator is mounted into the API server at ``/generator`` and the
``generate_agent`` tool points at it, so the delegated path works out of the box.

Stopping: the first SIGTERM/SIGINT stops the server (open streams end at an event
boundary), then the consumer and the worker (which drains for
``RUNRELAY_SHUTDOWN_GRACE_S`` on real backends; on embedded ones nothing outlives
the process, so it hands back at once), then closes the runtime. A second signal
skips the worker's grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Generator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from api.app import create_app
from api.server import Server, build_server
from shared import tracing
from shared.errors import BackendUnavailable
from shared.runtime import Runtime
from shared.settings import Settings
from workers.consumer import CompletionConsumer
from workers.generator import create_generator_app
from workers.worker import Worker

log = logging.getLogger("runrelay.dev")

GENERATOR_PATH = "/generator"
GENERATOR_DELAY_S = 3.0
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_EXAMPLE_INPUT = '\'{"prompt":"a knight","paragraphs":5}\''


class _DevServer(Server):
    """The API server without uvicorn's own signal handling: `run_dev` owns the signals.

    uvicorn re-raises a caught SIGTERM once it has stopped, which would kill the
    process before the worker and the consumer are stopped and make the exit code -15.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def run_dev(settings: Settings, host: str, port: int) -> None:
    """Run everything until SIGTERM/SIGINT; `ConfigError` for bad settings.

    Exits with a message naming the backend when a configured Redis or RabbitMQ
    cannot be reached.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)
    sock = _bind(host, port)
    try:
        port = sock.getsockname()[1]
        settings = dev_settings(settings, host, port)
        tracing.configure("runrelay-dev")
        runtime = Runtime.build(settings, allow_embedded=True)
        import uvloop

        uvloop.run(_serve(runtime, sock, host, port))
    except BackendUnavailable as exc:
        raise SystemExit(f"runrelay dev: cannot start: {exc}") from None
    finally:
        sock.close()


def dev_settings(settings: Settings, host: str, port: int) -> Settings:
    """`settings` with ``generator_url`` on this server, unless it was set explicitly."""
    if "generator_url" in settings.model_fields_set:
        return settings
    url = f"{_base_url(host, port)}{GENERATOR_PATH}"
    return settings.model_copy(update={"generator_url": url})


def _base_url(host: str, port: int) -> str:
    # A wildcard bind is reachable on loopback; that is the address to hand out.
    shown = "127.0.0.1" if host in {"", "0.0.0.0"} else "[::1]" if host == "::" else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def _bind(host: str, port: int) -> socket.socket:
    # Bound before anything starts: a taken port fails at once, and port 0 gets a
    # real port that the banner and the generator URL can name.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"runrelay dev: cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _auth_warning(settings: Settings) -> str | None:
    if settings.token_owners() or settings.jwt_secret is not None:
        return None
    return (
        "no RUNRELAY_API_TOKENS or RUNRELAY_JWT_SECRET: the API is OPEN, every caller is "
        "'anonymous'. Fine on your machine; never expose it like this."
    )


def _cli() -> str:
    """How to type `runrelay` here: the bare name if PATH finds this one, else its path."""
    ours = Path(sys.argv[0]).resolve()
    found = shutil.which("runrelay")
    if found is not None and Path(found).resolve() == ours:
        return "runrelay"
    try:
        return str(ours.relative_to(Path.cwd()))
    except ValueError:
        return str(ours)


def _banner(runtime: Runtime, base_url: str) -> str:
    settings = runtime.settings
    backends = (
        "embedded (in this process; nothing survives a restart)"
        if runtime.embedded
        else "Redis + RabbitMQ"
    )
    url_flag = "" if base_url == "http://127.0.0.1:8000" else f" --url {base_url}"
    return "\n".join(
        [
            "",
            f"  runrelay dev is up: API, worker, consumer and generator on {base_url}",
            f"  backends:   {backends}",
            f"  dashboard:  {base_url}/",
            f"  API docs:   {base_url}/docs",
            f"  generator:  {settings.generator_url}",
            f"  try:        {_cli()} run story --input {_EXAMPLE_INPUT} --follow{url_flag}",
            "",
        ]
    )


@contextlib.asynccontextmanager
async def _started(runtime: Runtime, app: Starlette) -> AsyncIterator[Worker]:
    """Start the runtime, the consumer and the worker; stop them in reverse on exit."""
    await runtime.start()
    try:
        generator = create_generator_app(
            delay_s=GENERATOR_DELAY_S,
            via="queue",
            publish=runtime.broker.publish_completion,
            webhook_url=None,
            api_key=None,
        )
        app.mount(GENERATOR_PATH, generator)
        consumer = CompletionConsumer(runtime)
        worker = Worker(runtime)
        # A mounted app's lifespan is not run by the server it is mounted in: run it here.
        async with generator.router.lifespan_context(generator):
            await consumer.start()
            try:
                await worker.start()
                try:
                    yield worker
                finally:
                    # Embedded state dies with the process: handing back at once loses nothing.
                    await worker.stop(grace_s=0 if runtime.embedded else None)
            finally:
                await consumer.stop()
    finally:
        await runtime.close()


async def _serve(runtime: Runtime, sock: socket.socket, host: str, port: int) -> None:
    app = create_app(runtime, allow_open=True, manage_runtime=False)
    server = _DevServer(build_server(app, host, port).config, app)
    stopper = _Stopper(server)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopper.on_signal, sig)
    try:
        warning = _auth_warning(runtime.settings)
        if warning:
            log.warning(warning)
        async with _started(runtime, app) as worker:
            stopper.worker = worker
            announce = asyncio.create_task(_announce(server, runtime, _base_url(host, port)))
            try:
                await server.serve(sockets=[sock])
            finally:
                announce.cancel()
            if not server.started and not stopper.signals:
                raise SystemExit("runrelay dev: the API server did not start (see the log above)")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await stopper.wait()
    log.info("runrelay dev stopped")


class _Stopper:
    """First signal: stop the server (the rest stops after it). Second: stop at once."""

    def __init__(self, server: uvicorn.Server) -> None:
        self.server = server
        self.worker: Worker | None = None
        self.signals = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def on_signal(self, sig: int) -> None:
        self.signals += 1
        name = signal.Signals(sig).name
        if self.signals == 1:
            log.info("got %s; stopping (send it again to skip the grace)", name)
            self.server.should_exit = True
            return
        log.info("got %s again; handing running runs back now", name)
        self.server.force_exit = True
        if self.worker is not None:
            for execution in list(self.worker.executions.values()):
                task = asyncio.create_task(execution.hand_back())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _announce(server: uvicorn.Server, runtime: Runtime, base_url: str) -> None:
    # uvicorn exposes only a flag, no event, for "listening"; print once it is.
    while not server.started:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    print(_banner(runtime, base_url), file=sys.stderr, flush=True)
