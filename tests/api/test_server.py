"""`runrelay api` refuses to start in ways an operator would regret, and says why."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from api.middleware import redacted_query
from api.server import serve
from shared.errors import ConfigError
from shared.settings import Settings


def test_refuses_to_run_open_without_saying_so(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError) as refused:
        serve(make_settings(), "127.0.0.1", 0)
    message = str(refused.value)
    for name in ("RUNRELAY_API_TOKENS", "RUNRELAY_JWT_SECRET", "RUNRELAY_ALLOW_ANONYMOUS"):
        assert name in message


def test_needs_the_real_backends(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match="RUNRELAY_REDIS_URL"):
        serve(make_settings(redis_url=None, api_tokens="t:o"), "127.0.0.1", 0)


def test_access_tokens_are_redacted_from_logged_queries() -> None:
    assert redacted_query(b"after=3&access_token=secret") == "after=3&access_token=REDACTED"
    assert redacted_query(b"") == ""
