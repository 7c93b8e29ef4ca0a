"""schemathesis against the API's own OpenAPI schema, on a real `runrelay api` process.

Bounded: ``RUNRELAY_FAULT_SCHEMA_EXAMPLES`` examples per operation (default 12) and a
time budget. Streams are included: the API runs with a 2 s connection cap, so every
SSE response ends by itself. The checks: no 5xx (and no traceback in the API's log),
and every answer is one the schema declares: its status, its content type, its body.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.faults.conftest import ALICE, spawn_api
from tests.support.procs import Processes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

EXAMPLES = os.environ.get("RUNRELAY_FAULT_SCHEMA_EXAMPLES", "12")
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    )
)


async def test_generated_requests_get_declared_answers_never_a_5xx(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    settings = make_settings()
    api, port = await spawn_api(
        processes,
        settings,
        tmp_path / "api.log",
        RUNRELAY_MAX_CONNECTION_S="2",
        RUNRELAY_HEARTBEAT_S="1",
        RUNRELAY_INTERNAL_API_KEY="hook-key",
    )
    st = str(Path(sys.executable).with_name("st"))
    command = [
        st, "run", f"http://127.0.0.1:{port}/openapi.json",
        "--checks", CHECKS,
        "--max-examples", EXAMPLES,
        "--max-time", "15",
        "--seed", "1",
        "--request-timeout", "10",
        "--phases", "examples,fuzzing",
        "--header", f"Authorization: Bearer {ALICE}",
        "--header", "X-API-Key: hook-key",
        "--workers", "2",
        "--warnings", "off",
    ]  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=130, cwd=tmp_path
    )
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert api.alive(), api.output()[-3000:]
    assert "Traceback" not in api.output(), api.output()[-3000:]
