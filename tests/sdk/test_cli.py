"""The CLI's own behaviour, without an API: help, config masking, input validation, an
unreachable URL."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runrelay.cli import app
from tests.support.devserver import RUNRELAY
from tests.support.ports import free_port

COMMANDS = [
    "run",
    "tail",
    "status",
    "cancel",
    "tools",
    "dead",
    "api",
    "worker",
    "consumer",
    "generator",
    "dev",
    "config",
]


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # A developer's .env in the repo must not leak into the settings under test.
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_top_level_help_lists_every_command(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(runner: CliRunner, command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_config_prints_settings_with_secrets_masked(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNRELAY_JWT_SECRET", "hunter2-jwt")
    monkeypatch.setenv("RUNRELAY_API_TOKENS", "tok-secret:alice")
    monkeypatch.setenv("RUNRELAY_REDIS_URL", "redis://user:pa55word@redis.example:6379/0")
    monkeypatch.setenv("RUNRELAY_HEARTBEAT_S", "5")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    assert "RUNRELAY_HEARTBEAT_S=5.0" in result.output
    assert "RUNRELAY_JWT_SECRET=********" in result.output
    assert "RUNRELAY_REDIS_URL=redis://user:********@redis.example:6379/0" in result.output
    for secret in ("hunter2-jwt", "tok-secret", "pa55word"):
        assert secret not in result.output


def test_a_bad_setting_exits_2_naming_the_variable(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNRELAY_STREAM_TTL_S", "0")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2
    assert "RUNRELAY_STREAM_TTL_S" in result.output


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", '"text"'])
def test_bad_input_json_exits_2_naming_the_option(runner: CliRunner, bad: str) -> None:
    # Port 9 (discard) is never contacted: the input is rejected first.
    result = runner.invoke(app, ["run", "story", "--input", bad, "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "--input" in result.output


def test_a_bad_port_env_exits_2_naming_port(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORT", "eighty")
    result = runner.invoke(app, ["dev"])
    assert result.exit_code == 2
    assert "PORT" in result.output


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args",
    [["status"], ["run", "story", "--input", '{"prompt": "x"}', "--follow"], ["tail", "run_x"]],
    ids=["status", "run-follow", "tail"],
)
def test_a_refused_connection_fails_fast_naming_the_url(args: list[str], tmp_path: Path) -> None:
    """Nothing listens on the port: exit 4 within seconds (not ~20 s of silent stream
    retries), saying which URL could not be reached."""
    url = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [RUNRELAY, *args, "--url", url],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=10,  # a deadline: the retries of a stream would take longer
        check=False,
    )
    assert done.returncode == 4, done.stderr
    assert f"cannot reach the API at {url}" in " ".join(done.stderr.split())


def test_status_fits_80_columns_with_one_timestamp_format(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from runrelay.cli import _print_record, _print_service_status

    monkeypatch.setenv("COLUMNS", "80")
    worker = {
        "worker_id": "worker-host-17:12368:e34dfa",
        "active": 3,
        "concurrency": 8,
        "started_at": "2026-12-01T09:05:57.478Z",
        "last_seen": 1796115961.5,
        "tools": ["countdown", "edit_agent", "generate_agent", "llm", "story"],
    }
    queues = [{"name": "runrelay.runs", "messages": 2, "consumers": 1}]
    _print_service_status({"queues": queues, "workers": [worker], "runs_by_status": {}})
    _print_record({"run_id": "run_1", "created_at": "2026-12-01T09:05:58.001Z"})
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "worker-host-17:12368:e34dfa" in out and "3/8" in out
    assert "2026-12-01 09:05:57Z" in out and "2026-12-01 09:05:58Z" in out
    assert "T09:" not in out and "1796115961" not in out
