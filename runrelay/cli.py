"""The ``runrelay`` command: client commands over the SDK, and the process entry points.

Client commands (``run``, ``tail``, ``status``, ``cancel``) talk to the API at
``--url`` / ``RUNRELAY_URL`` with ``--token`` / ``RUNRELAY_TOKEN``; streamed text
goes to stdout, everything else (status lines, progress) to stderr, so
``runrelay run story --input '{}' --follow > story.txt`` captures just the story.

Process commands (``api``, ``worker``, ``consumer``, ``generator``, ``dev``) import
their module only when run, so ``runrelay --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn
from rich.table import Table

from runrelay.client import DEFAULT_URL, Run, RunRelay
from runrelay.errors import APIConnectionError, APIError, RunRelayClientError, StreamError
from runrelay.events import (
    AnyEvent,
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
)

if TYPE_CHECKING:
    from shared.settings import Settings

# Exit codes, documented in `runrelay --help`.
EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_RUN_CANCELLED = 3
EXIT_API_ERROR = 4
EXIT_INTERRUPTED = 130

# Requests give up quickly (an unreachable URL fails in about a second, naming it);
# a stream that reached the API once rides out an API restart.
ONESHOT_RETRIES = 2
STREAM_RETRIES = 8

app = typer.Typer(
    name="runrelay",
    help=(
        "Long-running runs whose output streams to clients that drop and come back.\n\n"
        "Exit codes of run --follow and tail: 0 run completed, 1 run failed, "
        "2 usage or config error, 3 run cancelled, 4 API error or unreachable, "
        "130 interrupted (the run itself goes on)."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

UrlOption = Annotated[
    str, typer.Option("--url", envvar="RUNRELAY_URL", help="API base URL.", show_envvar=True)
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="RUNRELAY_TOKEN", help="Bearer token.", show_default=False),
]
HostOption = Annotated[str, typer.Option("--host", help="Interface to listen on.")]


def _stderr() -> Console:
    # Built per call so test runners that swap sys.stderr see the output.
    return Console(file=sys.stderr, highlight=False)


def _parse_input(value: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="--input") from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter("must be a JSON object, e.g. '{}'", param_hint="--input")
    return parsed


def _client_command(
    url: str,
    token: str | None,
    action: Callable[[RunRelay], Awaitable[int]],
    retries: int = ONESHOT_RETRIES,
) -> None:
    """Run ``action`` with a client, turning SDK errors and Ctrl-C into exit codes."""

    async def go() -> int:
        async with RunRelay(url, token, max_retries=retries) as client:
            return await action(client)

    err = _stderr()
    try:
        code = asyncio.run(go())
    except APIError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)} [dim]({exc.status} {exc.code})[/dim]")
        code = EXIT_API_ERROR
    except StreamError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        if exc.last_event_id is not None:
            err.print(f"resume with --since {exc.last_event_id}")
        code = EXIT_API_ERROR
    except APIConnectionError as exc:
        reason = exc.__cause__ or exc
        err.print(f"[red]error:[/red] cannot reach the API at {escape(url)}: {escape(str(reason))}")
        code = EXIT_API_ERROR
    except RunRelayClientError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))} [dim](is the API at {url}?)[/dim]")
        code = EXIT_API_ERROR
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    raise typer.Exit(code)


# --- client commands ---------------------------------------------------------------


@app.command()
def run(
    tool: Annotated[str, typer.Argument(help="Tool to run, e.g. story, countdown.")],
    input: Annotated[
        str, typer.Option("--input", "-i", help="Tool input as a JSON object.")
    ] = "{}",
    session: Annotated[
        str | None, typer.Option("--session", help="Session to add the run to.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream the run until it ends.")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Start a run of TOOL; print its id, or with --follow stream it to the end.

    Example: [cyan]runrelay run story --input '{"prompt": "a lighthouse"}' --follow[/cyan]

    With --follow the text goes to stdout and progress to stderr; a dropped
    connection is resumed where it stopped. Exit code: 0 completed, 1 failed,
    3 cancelled, 4 API error, 130 interrupted (the run goes on; resume with tail).
    """
    payload = _parse_input(input)

    async def action(client: RunRelay) -> int:
        created = await client.runs.create(tool, payload, session_id=session)
        if not follow:
            print(created.run_id)
            _stderr().print(
                f"[dim]run {created.run_id} {created.status}; "
                f"follow it with: runrelay tail {created.run_id}"
                f"{escape(_resume_options(url, token))}[/dim]",
                soft_wrap=True,
            )
            return EXIT_OK
        return await _follow(client, created.run_id, None, _resume_options(url, token))

    _client_command(url, token, action)


@app.command()
def tail(
    run_id: Annotated[str, typer.Argument(help="The run to follow.")],
    since: Annotated[
        int | None, typer.Option("--since", min=0, help="Only events after this id.")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Stream a run's events (from the start, or after --since) until it ends.

    Example: [cyan]runrelay tail r_01H8X --since 42[/cyan]

    Exit code: 0 completed, 1 failed, 3 cancelled, 4 API error, 130 interrupted.
    """
    options = _resume_options(url, token)

    async def action(client: RunRelay) -> int:
        await client.runs.get(run_id)  # reachable, and the run exists: fail fast otherwise
        return await _follow(client, run_id, since, options)

    _client_command(url, token, action)


@app.command()
def status(
    run_id: Annotated[
        str | None, typer.Argument(help="A run; without it, the whole service.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print raw JSON.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Show queue depths, workers and runs by status, or one run's record.

    Examples: [cyan]runrelay status[/cyan]   [cyan]runrelay status r_01H8X --json[/cyan]
    """

    async def action(client: RunRelay) -> int:
        body: Any
        if run_id is None:
            body = await client.status()
        else:
            body = (await client.runs.get(run_id)).model_dump(exclude_none=True)
        if as_json:
            print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        elif run_id is None:
            _print_service_status(body)
        else:
            _print_record(body)
        return EXIT_OK

    _client_command(url, token, action)


@app.command()
def cancel(
    run_id: Annotated[str, typer.Argument(help="The run to cancel.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Ask a run to stop (idempotent); prints the run's status.

    Example: [cyan]runrelay cancel r_01H8X[/cyan]
    """

    async def action(client: RunRelay) -> int:
        record = await client.runs.cancel(run_id)
        print(f"{record.run_id} {record.status}")
        return EXIT_OK

    _client_command(url, token, action)


@app.command()
def tools(
    as_json: Annotated[bool, typer.Option("--json", help="Print raw JSON.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List the tools runs may name, with their input fields (* = required).

    Example: [cyan]runrelay tools[/cyan]
    """

    async def action(client: RunRelay) -> int:
        body = await client.request("GET", "/v1/tools")
        if as_json:
            print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
            return EXIT_OK
        table = Table("tool", "input", "description", title="Tools", title_justify="left")
        for spec in body.get("tools", []):
            table.add_row(
                escape(spec["name"]),
                escape(_input_fields(spec.get("input_schema") or {})),
                escape(spec.get("description", "")),
            )
        Console(highlight=False).print(table)
        return EXIT_OK

    _client_command(url, token, action)


dead_app = typer.Typer(
    help=(
        "Dead letters in runrelay.dead (an operator token: RUNRELAY_ADMIN_OWNERS).\n\n"
        "Example: [cyan]runrelay dead list[/cyan]"
    ),
    no_args_is_help=True,
)
app.add_typer(dead_app, name="dead")


@dead_app.command("list")
def dead_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print raw JSON.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List dead letters: id, queue, age, reason and the start of the body.

    Example: [cyan]runrelay dead list[/cyan]
    """

    async def action(client: RunRelay) -> int:
        body = await client.request("GET", "/v1/dead")
        if as_json:
            print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
            return EXIT_OK
        table = Table(title="Dead letters")
        table.add_column("id", no_wrap=True, min_width=16)  # the one column to copy whole
        for name in ("queue", "age", "reason", "body"):
            table.add_column(name)
        for letter in body.get("dead_letters", []):
            table.add_row(
                letter["id"],
                escape(letter["queue"]),
                f"{letter['age_s']:.0f}s",
                escape(letter["reason"]),
                escape(letter["body_preview"][:60]),
            )
        Console(highlight=False).print(table)
        return EXIT_OK

    _client_command(url, token, action)


@dead_app.command("replay")
def dead_replay(
    letter_id: Annotated[str, typer.Argument(help="The dead letter's id (from dead list).")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Publish a dead letter back to the queue it came from.

    Example: [cyan]runrelay dead replay 3f2a9c0d1b2e4f56[/cyan]
    """

    async def action(client: RunRelay) -> int:
        letter = await client.request("POST", f"/v1/dead/{letter_id}/replay")
        print(f"replayed {letter['id']} to {letter['queue']}")
        return EXIT_OK

    # Not retried: a replay that reached the broker must not be sent twice.
    _client_command(url, token, action, 0)


@dead_app.command("purge")
def dead_purge(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Delete every dead letter.

    Example: [cyan]runrelay dead purge --yes[/cyan]
    """
    if not yes:
        typer.confirm("Delete every dead letter?", abort=True)

    async def action(client: RunRelay) -> int:
        body = await client.request("DELETE", "/v1/dead")
        print(f"purged {body['purged']} dead letters")
        return EXIT_OK

    _client_command(url, token, action)


def _input_fields(schema: dict[str, Any]) -> str:
    required = set(schema.get("required", []))
    fields = []
    for name, prop in schema.get("properties", {}).items():
        kind = prop.get("type") or "|".join(p.get("type", "?") for p in prop.get("anyOf", []))
        fields.append(f"{name}{'*' if name in required else ''}: {kind or 'any'}")
    return ", ".join(fields)


# --- following a run ---------------------------------------------------------------


class _Follower:
    """Renders one run's events: text to stdout, the rest to stderr."""

    def __init__(self, err: Console) -> None:
        self.err = err
        self.last_id: int | None = None
        self.exit_code: int | None = None
        self._line_open = False  # stdout holds text not yet ended by a newline
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def handle(self, event: AnyEvent) -> None:
        if event.id is not None:
            self.last_id = event.id
        if isinstance(event, MessageDelta):
            self._stop_progress()
            sys.stdout.write(event.data.delta)
            sys.stdout.flush()
            self._line_open = not event.data.delta.endswith("\n")
        elif isinstance(event, MessageCompleted):
            self._end_line()
        elif isinstance(event, ToolProgress):
            self._show_progress(event.data.progress, event.data.message or "")
        elif isinstance(event, RunCompleted | RunFailed | RunCancelled):
            self.finish(event.data.status or event.type.removeprefix("run."), event.data.error)
        else:
            self._note(event)

    def finish(self, status: str, error: str | None) -> None:
        self._stop_progress()
        self._end_line()
        detail = f": {escape(error)}" if error else ""
        color, self.exit_code = {
            "completed": ("green", EXIT_OK),
            "cancelled": ("yellow", EXIT_RUN_CANCELLED),
        }.get(status, ("red", EXIT_RUN_FAILED))
        self.err.print(f"[{color}]run {escape(status)}[/{color}]{detail}")

    def close(self) -> None:
        self._stop_progress()
        self._end_line()

    def _note(self, event: AnyEvent) -> None:
        if isinstance(event, RunQueued):
            line = f"queued ({escape(event.data.tool)}, attempt {event.data.attempt})"
        elif isinstance(event, RunStarted):
            line = f"started (attempt {event.data.attempt}, worker {event.data.worker or '?'})"
        elif isinstance(event, RunRetrying):
            line = f"retrying (attempt {event.data.attempt}: {escape(event.data.reason or '')})"
        elif isinstance(event, ToolStarted):
            line = f"tool {escape(event.data.tool_call.name)} started"
        elif isinstance(event, ToolCompleted):
            self._stop_progress()
            outcome = "done" if event.data.success else "[red]failed[/red]"
            line = f"tool {escape(event.data.tool_name or '')} {outcome}"
        elif isinstance(event, OperationAccepted):
            line = f"waiting for operation {escape(event.data.operation_id)}"
        elif isinstance(event, OperationCompleted):
            outcome = "done" if event.data.success else f"failed: {event.data.error or ''}"
            line = f"operation {escape(event.data.operation_id)} {escape(outcome)}"
        elif isinstance(event, StreamGap):
            line = (
                f"[yellow]events {event.data.from_}..{event.data.to} are no longer "
                "retained; continuing after them[/yellow]"
            )
        else:
            line = escape(event.type)
        self._stop_progress()
        self.err.print(f"[dim]▸[/dim] {line}")

    def _show_progress(self, fraction: float, message: str) -> None:
        if not self.err.is_terminal:
            self.err.print(f"[dim]▸[/dim] {fraction:.0%} {escape(message)}")
            return
        if self._progress is None:
            self._end_line()
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                console=self.err,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=1.0)
        assert self._task is not None
        self._progress.update(self._task, completed=fraction, description=escape(message))

    def _stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = self._task = None

    def _end_line(self) -> None:
        if self._line_open:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self._line_open = False


def _resume_options(url: str, token: str | None) -> str:
    """What the printed `tail` command needs to reach the same API as this one did."""
    options = f" --url {url}" if url != DEFAULT_URL else ""
    if token is not None and token != os.environ.get("RUNRELAY_TOKEN"):
        options += " --token $TOKEN"  # given on the command line: never echo a secret
    return options


async def _follow(client: RunRelay, run_id: str, since: int | None, options: str = "") -> int:
    # The API answered already: from here a refused connection is a restart to ride out.
    client.max_retries = STREAM_RETRIES
    err = _stderr()
    follower = _Follower(err)
    err.print(f"[dim]following run {escape(run_id)}[/dim]")
    try:
        async with aclosing(client.events.stream(run_id=run_id, since_id=since)) as events:
            async for event in events:
                follower.handle(event)
    except (KeyboardInterrupt, asyncio.CancelledError):
        # Ctrl-C cancels this top-level task; ending it normally gives exit code 130.
        follower.close()
        cursor = f" --since {follower.last_id}" if follower.last_id is not None else ""
        err.print(
            "[yellow]stopped following; the run goes on: "
            f"runrelay tail {run_id}{cursor}{escape(options)}",
            soft_wrap=True,  # a command to copy: never broken across lines
        )
        return EXIT_INTERRUPTED
    finally:
        follower.close()
    if follower.exit_code is None:
        # The stream ended with no terminal event after the cursor: the run had already ended.
        record: Run = await client.runs.get(run_id)
        follower.finish(record.status, record.error)
    return follower.exit_code if follower.exit_code is not None else EXIT_RUN_FAILED


# --- status rendering --------------------------------------------------------------


def _when(value: object) -> str:
    """Every timestamp the CLI prints, one format: ``2026-01-02 03:04:05Z`` (UTC).

    The API sends ISO strings for run times and unix seconds for heartbeats.
    """
    if isinstance(value, int | float):
        moment = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    else:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _ago(value: object) -> str:
    """Unix seconds as an age: ``3s ago``."""
    if not isinstance(value, int | float):
        return ""
    return f"{max(0.0, time.time() - value):.0f}s ago"


def _print_service_status(body: dict[str, Any]) -> None:
    # Sized for an 80-column terminal: fixed columns, lists joined, times in one format.
    out = Console(highlight=False)
    queues = Table("queue", "messages", "consumers", title="Queues", title_justify="left")
    for queue in body.get("queues", []):
        queues.add_row(*(escape(str(queue.get(k, ""))) for k in ("name", "messages", "consumers")))
    out.print(queues)
    workers = Table(title="Workers", title_justify="left")
    workers.add_column("worker", no_wrap=True)  # the id to copy whole
    workers.add_column("runs", justify="right")
    workers.add_column("started", no_wrap=True)
    workers.add_column("seen", justify="right", no_wrap=True)  # an age, like `dead list`
    workers.add_column("tools")
    for worker in body.get("workers", []):
        workers.add_row(
            escape(str(worker.get("worker_id", ""))),
            f"{worker.get('active', '?')}/{worker.get('concurrency', '?')}",
            _when(worker.get("started_at")),
            _ago(worker.get("last_seen")),
            escape(", ".join(worker.get("tools") or [])),
        )
    out.print(workers)
    runs = Table("status", "runs", title="Runs by status", title_justify="left")
    for name, count in body.get("runs_by_status", {}).items():
        runs.add_row(escape(str(name)), str(count))
    if not body.get("runs_by_status"):
        runs.add_row("[dim]none[/dim]", "0")
    out.print(runs)


def _print_record(record: dict[str, Any]) -> None:
    table = Table("field", "value", show_header=False, box=None)
    for key, value in record.items():
        if key.endswith("_at"):
            shown = _when(value)
        elif isinstance(value, dict | list):
            shown = orjson.dumps(value).decode()
        else:
            shown = str(value)
        table.add_row(f"[bold]{escape(key)}[/bold]", escape(shown))
    Console(highlight=False).print(table)


# --- process commands --------------------------------------------------------------


class Via(StrEnum):
    queue = "queue"
    webhook = "webhook"


def _settings() -> Settings:
    from shared.errors import ConfigError
    from shared.settings import load_settings

    try:
        return load_settings()
    except ConfigError as exc:
        _stderr().print(f"[red]config error:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_USAGE) from None


def _port(port: int | None, default: int) -> int:
    if port is not None:
        return port
    raw = os.environ.get("PORT")
    if raw is None or not raw.strip():
        return default
    if not raw.strip().isdigit() or not 0 < int(raw) < 65536:
        raise typer.BadParameter(f"{raw!r} is not a port number", param_hint="PORT")
    return int(raw)


def _start(module: str, function: str, *args: object) -> None:
    """Import ``module.function`` now (not at CLI start) and run it, async or not."""
    from shared.errors import ConfigError

    # Looked up by name: these modules belong to the processes, and the CLI must
    # keep working (for --help, config, the client commands) without loading them.
    entry: Callable[..., object] = getattr(importlib.import_module(module), function)
    try:
        result = entry(*args)
        if inspect.iscoroutine(result):
            asyncio.run(result)
    except ConfigError as exc:
        _stderr().print(f"[red]config error:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


PortOption = Annotated[
    int | None,
    typer.Option("--port", min=1, max=65535, help="Port (default: $PORT, else 8000)."),
]


@app.command()
def api(host: HostOption = "127.0.0.1", port: PortOption = None) -> None:
    """Run the API process (needs Redis and RabbitMQ).

    Example: [cyan]RUNRELAY_REDIS_URL=redis://localhost runrelay api --port 8000[/cyan]
    """
    _start("api.server", "serve", _settings(), host, _port(port, 8000))


@app.command()
def worker() -> None:
    """Run a worker: consume run requests and execute tools.

    Example: [cyan]RUNRELAY_WORKER_CONCURRENCY=16 runrelay worker[/cyan]
    """
    _start("workers.worker", "run_worker", _settings())


@app.command()
def consumer() -> None:
    """Run the completion consumer: finish delegated runs from operation.complete.

    Example: [cyan]RUNRELAY_AMQP_URL=amqp://localhost runrelay consumer[/cyan]
    """
    _start("workers.consumer", "run_consumer", _settings())


@app.command()
def generator(
    host: HostOption = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port.")] = 8001,
    via: Annotated[Via, typer.Option("--via", help="How to report completions.")] = Via.queue,
    delay_s: Annotated[
        float, typer.Option("--delay-s", min=0, help="Seconds before completing.")
    ] = 3.0,
) -> None:
    """Run the example external generator (answers 202, completes later).

    Example: [cyan]runrelay generator --via webhook --delay-s 5[/cyan]
    """
    _start("workers.generator", "run_generator", _settings(), host, port, via.value, delay_s)


@app.command()
def dev(host: HostOption = "127.0.0.1", port: PortOption = None) -> None:
    """Run everything in one process; embedded backends when no Redis/AMQP URL is set.

    Example: [cyan]runrelay dev[/cyan] then [cyan]runrelay run story --follow[/cyan]
    """
    _start("runrelay.dev", "run_dev", _settings(), host, _port(port, 8000))


@app.command()
def config() -> None:
    """Print the effective settings (secrets masked) as RUNRELAY_*=value lines.

    Example: [cyan]RUNRELAY_HEARTBEAT_S=5 runrelay config[/cyan]
    """
    for name, value in _settings().masked().items():
        if value is None:
            shown = ""
        elif isinstance(value, list):
            shown = ",".join(str(v) for v in value)
        else:
            shown = str(value)
        print(f"{name}={shown}")


def main() -> None:
    """Console-script entry point."""
    app()
