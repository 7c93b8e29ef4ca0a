"""Settings as an operator meets them: env vars in, loud errors naming the variable out."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.settings import Settings, load_settings


def load(**overrides: object) -> Settings:
    # A developer's .env must not leak into these tests.
    return load_settings(_env_file=None, **overrides)


def test_defaults_need_nothing_set() -> None:
    settings = load()

    assert settings.redis_url is None
    assert settings.amqp_url is None
    assert settings.key_prefix == "runrelay:"
    assert settings.stream_ttl_s == 3600
    assert settings.tools == []


def test_env_vars_are_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNRELAY_STREAM_TTL_S", "60")
    monkeypatch.setenv("RUNRELAY_HEARTBEAT_S", "0.5")
    monkeypatch.setenv("RUNRELAY_ALLOW_ANONYMOUS", "1")

    settings = load()

    assert settings.stream_ttl_s == 60
    assert settings.heartbeat_s == 0.5
    assert settings.allow_anonymous is True


def test_a_value_that_is_not_a_number_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNRELAY_STREAM_TTL_S", "abc")

    with pytest.raises(ConfigError, match="RUNRELAY_STREAM_TTL_S"):
        load()


def test_a_value_out_of_range_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNRELAY_WORKER_CONCURRENCY", "0")

    with pytest.raises(ConfigError, match="RUNRELAY_WORKER_CONCURRENCY"):
        load()


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNRELAY_STREAM_TTL_S", "abc")
    monkeypatch.setenv("RUNRELAY_HEARTBEAT_S", "-1")

    with pytest.raises(ConfigError) as caught:
        load()

    assert "RUNRELAY_STREAM_TTL_S" in str(caught.value)
    assert "RUNRELAY_HEARTBEAT_S" in str(caught.value)


@pytest.mark.parametrize("tokens", ["nocolon", "tok:alice,broken", ":alice", "tok:"])
def test_api_tokens_without_an_owner_are_refused(
    monkeypatch: pytest.MonkeyPatch, tokens: str
) -> None:
    monkeypatch.setenv("RUNRELAY_API_TOKENS", tokens)

    with pytest.raises(ConfigError, match="RUNRELAY_API_TOKENS") as caught:
        load()

    # The message names the variable, never the secret.
    if tokens != "tok:":
        assert tokens not in str(caught.value)


def test_api_tokens_map_to_owners(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNRELAY_API_TOKENS", "t1:alice, t2:bob,")

    assert load().token_owners() == {"t1": "alice", "t2": "bob"}


def test_tools_is_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNRELAY_TOOLS", "a.b, c.d")

    assert load().tools == ["a.b", "c.d"]


def test_an_empty_tools_variable_is_no_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNRELAY_TOOLS", " ")

    assert load().tools == []


def test_settings_are_frozen() -> None:
    settings = load()

    with pytest.raises(ValueError):
        settings.stream_ttl_s = 1  # type: ignore[misc]


def test_masked_hides_secrets() -> None:
    settings = load(
        api_tokens="tok-secret:alice",
        jwt_secret="jwt-secret",
        internal_api_key="key-secret",
        llm_api_key="sk-secret",
    )

    masked = settings.masked()

    text = repr(masked)
    for secret in ("tok-secret", "jwt-secret", "key-secret", "sk-secret"):
        assert secret not in text
    assert masked["RUNRELAY_API_TOKENS"] == "********"
    assert masked["RUNRELAY_JWT_SECRET"] == "********"


def test_masked_hides_passwords_in_urls_but_keeps_the_host() -> None:
    settings = load(
        redis_url="redis://:r3dis-pw@redis.internal:6379/0",
        amqp_url="amqp://app:amqp-pw@rabbit.internal:5672/prod",
        llm_base_url="https://api.example.com/v1",
    )

    masked = settings.masked()

    assert "r3dis-pw" not in repr(masked)
    assert "amqp-pw" not in repr(masked)
    assert masked["RUNRELAY_REDIS_URL"] == "redis://:********@redis.internal:6379/0"
    assert masked["RUNRELAY_AMQP_URL"] == "amqp://app:********@rabbit.internal:5672/prod"
    assert masked["RUNRELAY_LLM_BASE_URL"] == "https://api.example.com/v1"


def test_masked_leaves_an_at_sign_outside_the_credentials_alone() -> None:
    masked = load(generator_url="http://gen.internal/cb?email=a@b").masked()

    assert masked["RUNRELAY_GENERATOR_URL"] == "http://gen.internal/cb?email=a@b"


def test_masked_names_every_setting_by_its_variable() -> None:
    masked = load().masked()

    assert set(masked) == {f"RUNRELAY_{name.upper()}" for name in Settings.model_fields}
    assert masked["RUNRELAY_JWT_SECRET"] is None
