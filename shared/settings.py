"""One typed settings object, built once at process start from ``RUNRELAY_*`` variables."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.errors import ConfigError

_SECRET_FIELDS = ("api_tokens", "jwt_secret", "internal_api_key", "llm_api_key")


class AgentSpec(BaseModel):
    """One AgentOS-style agent or team: a name for clients and the tool that runs it.

    ``input`` is merged under the run input ``{"prompt": <message>}`` (e.g. a pace).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    tool: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")
    description: str = ""
    input: dict[str, Any] = Field(default_factory=dict)


def _default_agents() -> dict[str, AgentSpec]:
    return {"story": AgentSpec(name="Story", tool="story", description="Tells a story, slowly.")}


def _default_teams() -> dict[str, AgentSpec]:
    return {
        "story": AgentSpec(name="Story team", tool="story", description="A team telling a story.")
    }


class Settings(BaseSettings):
    """Every setting of every process; env var = ``RUNRELAY_`` + upper-cased field name."""

    model_config = SettingsConfigDict(
        env_prefix="RUNRELAY_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    # Backends: unset means "embedded" (only `runrelay dev` accepts that).
    # redis://host:port/db for one node; redis+cluster://h1:p1,h2:p2 (seed nodes) for a
    # Redis Cluster, or RUNRELAY_REDIS_CLUSTER=1 with a redis:// seed.
    redis_url: str | None = None
    redis_cluster: bool = False
    # Each append waits (WAIT) until this many replicas have it; 0 = Redis's default
    # asynchronous replication (see docs/scaling.md for what a failover may lose).
    redis_min_replicas: int = Field(default=0, ge=0, le=16)
    redis_min_replicas_timeout_ms: int = Field(default=1000, ge=1, le=60_000)
    # Several URLs, comma-separated, are the nodes of one RabbitMQ cluster, tried in order.
    amqp_url: str | None = None
    key_prefix: str = Field(default="runrelay:", min_length=1, max_length=64)

    # Event log retention.
    stream_ttl_s: int = Field(default=3600, ge=1)
    stream_max_events: int = Field(default=10_000, ge=10)

    # Streaming.
    heartbeat_s: float = Field(default=15.0, gt=0)
    max_connection_s: float = Field(default=300.0, gt=0)
    retry_ms: int = Field(default=2000, ge=0)
    subscriber_buffer: int = Field(default=1024, ge=8)
    max_streams_per_owner: int = Field(default=200, ge=1)
    max_active_runs_per_owner: int = Field(default=1000, ge=1)
    # Durable Streams (/ds/): how long a long-poll waits, how long one SSE response lives.
    ds_long_poll_s: float = Field(default=20.0, gt=0)
    ds_sse_max_s: float = Field(default=60.0, gt=0)

    # Auth and input bounds.
    api_tokens: SecretStr | None = None
    jwt_secret: SecretStr | None = None
    allow_anonymous: bool = False
    # Owners who may use the operator routes (dead letters, status); all in open mode.
    admin_owners: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Browser origins (scheme://host[:port], comma-separated, or *) allowed to call the API.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # The webhook's X-API-Key; CHAT_INTERNAL_API_KEY is the name existing services use.
    internal_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("RUNRELAY_INTERNAL_API_KEY", "CHAT_INTERNAL_API_KEY"),
    )

    # Metrics of processes without an HTTP API (worker, consumer); unset = not served.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    # Workers.
    worker_concurrency: int = Field(default=8, ge=1, le=1000)
    lease_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    publish_grace_s: float = Field(default=30.0, gt=0)
    tools: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # How long a worker may hold an emitted chunk to batch it with others while earlier
    # appends are in flight (an idle worker sends at once): see shared/appender.py.
    append_linger_ms: float = Field(default=1.0, ge=0, le=1000)

    # Delegated operations.
    generator_url: str = "http://127.0.0.1:8001"
    generator_timeout_s: float = Field(default=30.0, gt=0)
    early_completion_s: float = Field(default=60.0, ge=0)
    operation_timeout_s: float = Field(default=3600.0, gt=0)
    completion_max_redeliveries: int = Field(default=5, ge=1)

    # AgentOS-style dialect: id -> spec, JSON in RUNRELAY_AGENTS / RUNRELAY_TEAMS.
    agents: dict[str, AgentSpec] = Field(default_factory=_default_agents)
    teams: dict[str, AgentSpec] = Field(default_factory=_default_teams)

    # LLM tool.
    llm_base_url: str | None = None
    llm_api_key: SecretStr | None = None
    llm_model: str = "gpt-4o-mini"

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        schemes = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
        if not value.startswith(schemes):
            raise ValueError(f"must start with one of {', '.join(schemes)}")
        if "+cluster://" in value:
            hosts = value.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
            for host in hosts.split(","):
                _, sep, port = host.strip().rpartition(":")
                if not sep or not port.isdigit():
                    raise ValueError(f"cluster seed {host.strip()!r} must be host:port")
        return value

    def redis_target(self) -> str | None:
        """The Redis URL as the backend takes it: the cluster form when RUNRELAY_REDIS_CLUSTER."""
        url = self.redis_url
        if url is not None and self.redis_cluster and "+cluster://" not in url:
            scheme, rest = url.split("://", 1)
            return f"{scheme}+cluster://{rest}"
        return url

    @field_validator("tools", "admin_owners", "cors_origins", mode="before")
    @classmethod
    def _split_tools(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def token_owners(self) -> dict[str, str]:
        """``RUNRELAY_API_TOKENS`` (``token:owner,...``) as a mapping."""
        if self.api_tokens is None:
            return {}
        owners: dict[str, str] = {}
        for pair in self.api_tokens.get_secret_value().split(","):
            token, sep, owner = pair.strip().partition(":")
            if pair.strip() and (not sep or not token or not owner):
                raise ConfigError("RUNRELAY_API_TOKENS: each entry must be token:owner")
            if token:
                owners[token] = owner
        return owners

    def masked(self) -> dict[str, object]:
        """The effective settings with secrets replaced, for `runrelay config`."""
        out: dict[str, object] = {}
        for name, value in self.model_dump().items():
            if name in _SECRET_FIELDS and value is not None:
                value = "********"
            elif name.endswith("_url") and isinstance(value, str):
                value = _mask_url(value)
            out[f"RUNRELAY_{name.upper()}"] = value
        return out


def _mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:********@{host}"))


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning validation errors into one message naming each variable."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
        settings.token_owners()
    except ValidationError as exc:
        problems = "; ".join(
            f"RUNRELAY_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    return settings
