"""The configuration's schema: one frozen ``Section`` model per section of ``websocket.yaml``
and :class:`Config`, their root. docs/configuration.md is the operator's reference.

Adding an option: give the field a type and a default in its section class below (a new
section is a ``Section`` subclass plus a field on ``Config``), then document it, commented with
its default and unit, in ``websocket.yaml`` and in the section's table of
``docs/configuration.md``; tests/test_config.py fails until both mention it. It is settable
from the environment as ``WS_<SECTION>_<KEY>`` with no further work. A check that involves
several fields is a ``model_validator`` raising :class:`FieldError` to blame one of them.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal, Mapping, get_args

from pydantic import BaseModel, Field, PrivateAttr, ValidationInfo, field_validator, model_validator
from pydantic.types import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from ..addresses import Origin
from ..event_loop import NOT_INSTALLED as UVLOOP_MISSING
from ..event_loop import Setting as EventLoop
from ..event_loop import uvloop_available
from ..rooms import RoomOptions
from .base import FieldError, KeyPath, Section, describe

DEV_SECRET = "switchboard-dev-secret-change-me"


def _check_cidrs(values: list[str]) -> list[str]:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"not a valid IP address or CIDR: {v!r}") from None
    return values


class ServerConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    ws_path: str = "/ws"
    read_buffer_size: PositiveInt = 65536
    write_buffer_size: PositiveInt = 1_048_576
    max_queued_messages: PositiveInt = 1000
    max_message_size: PositiveInt = 65536
    compression: bool = False
    max_connections: NonNegativeInt = 10000
    write_timeout: PositiveFloat = 10.0
    ping_period: PositiveFloat = 25.0
    pong_wait: PositiveFloat = 60.0
    shutdown_timeout: PositiveFloat = 10.0
    # seconds from accepting a connection to its request headers being complete (slowloris)
    handshake_timeout: PositiveFloat = 10.0
    # seconds an idle keep-alive HTTP connection is kept between two requests
    keepalive_timeout: PositiveFloat = 75.0
    # connections the kernel holds accepted but not yet taken by the server (listen backlog)
    backlog: PositiveInt = 2048
    trusted_proxies: list[str] = []
    node_id: str = ""
    # "production" refuses settings only safe on a developer's machine (_environment_errors)
    environment: Literal["development", "production"] = "development"
    # GET /conformance/echo: an unauthenticated echo WebSocket for the Autobahn suite (tests only)
    conformance_echo: bool = False
    # what `serve` runs on: auto = uvloop when installed (the speed extra), else asyncio
    event_loop: EventLoop = "auto"
    # the garbage collector (server/collector.py): allocations between two young collections
    # (0 = CPython's 700), and start-up's objects frozen out of every later collection
    gc_threshold: NonNegativeInt = 10_000
    gc_freeze: bool = True

    @field_validator("ws_path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"must start with '/', got {v!r}")
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        return _check_cidrs(v)

    @field_validator("event_loop")
    @classmethod
    def _loop_installed(cls, v: str) -> str:
        if v == "uvloop" and not uvloop_available():
            raise ValueError(UVLOOP_MISSING)
        return v

    @model_validator(mode="after")
    def _pong_after_ping(self) -> "ServerConfig":
        if self.pong_wait <= self.ping_period:
            raise FieldError("pong_wait", f"must be greater than server.ping_period "
                             f"({self.ping_period:g}), got {self.pong_wait:g}")
        if self.conformance_echo and self.environment == "production":
            raise FieldError("conformance_echo", "must be false when server.environment is "
                             "production: it is an unauthenticated echo endpoint for tests")
        return self


class AuthConfig(Section):
    algorithm: Literal["HS256", "HS384", "HS512", "RS256", "ES256"] = "HS256"
    secret: str | None = DEV_SECRET
    public_key_file: str | None = None
    jwks_url: str | None = None
    jwks_cache_ttl: PositiveFloat = 300.0
    audience: str | None = None
    issuer: str | None = None
    leeway: NonNegativeFloat = 0.0
    require_exp: bool = True
    first_message_timeout: PositiveFloat = 10.0
    revoked_jtis: list[str] = []
    dev_login: bool = False

    @field_validator("jwks_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("https://", "http://")):
            raise ValueError(f"must be an http(s) URL, got {v!r}")
        return v

    @model_validator(mode="after")
    def _key_material(self) -> "AuthConfig":
        if self.algorithm.startswith("HS"):
            if not self.secret:
                raise FieldError("secret", f"is required for {self.algorithm}: set the JWT_SECRET "
                                 "environment variable (or auth.secret)")
        elif not (self.public_key_file or self.jwks_url):
            raise FieldError("algorithm", f"{self.algorithm} needs a public key: set "
                             "auth.public_key_file or auth.jwks_url")
        return self


class SecurityConfig(Section):
    ip_whitelist_enabled: bool = False
    ip_whitelist: list[str] = []
    ip_blacklist_enabled: bool = False
    ip_blacklist: list[str] = []
    check_origin: bool = False
    # "scheme://host[:port]" (default port implied), "scheme://*.example.com" for any
    # subdomain (not the apex), or "*" for any origin; see docs/security.md
    allowed_origins: list[str] = []
    max_connections_per_ip: NonNegativeInt = 100
    max_connections_per_user: NonNegativeInt = 10
    connect_rate_per_ip: NonNegativeInt = 300

    @field_validator("ip_whitelist", "ip_blacklist")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return _check_cidrs(v)

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for entry in v:
            if entry != "*":
                Origin.pattern(entry)
        return v


class TypeRate(Section):
    messages_per_minute: PositiveInt
    burst: PositiveInt


class RateLimitConfig(Section):
    enabled: bool = True
    messages_per_minute: PositiveInt = 120
    burst: PositiveInt = 20
    user_messages_per_minute: PositiveInt = 300
    user_burst: PositiveInt = 50
    per_type: dict[str, TypeRate] = {}
    dry_run: bool = False
    max_violations: PositiveInt = 10
    violation_window: PositiveFloat = 10.0


class NamespaceConfig(Section):
    history_size: NonNegativeInt | None = None
    history_ttl: NonNegativeFloat | None = None
    presence: bool | None = None
    join_leave_events: bool | None = None
    client_publish: bool | None = None
    max_members: NonNegativeInt | None = None
    allowed_roles: list[str] | None = None
    announce_max_members: NonNegativeInt | None = None


class RoomsConfig(Section):
    max_rooms: PositiveInt = 10000
    max_members: PositiveInt = 1000
    max_rooms_per_user: PositiveInt = 50
    default_rooms: list[str] = []
    allow_client_create: bool = True
    history_size: NonNegativeInt = 100
    history_ttl: NonNegativeFloat = 3600.0
    presence: bool = True
    join_leave_events: bool = True
    client_publish: bool = True
    allowed_roles: list[str] = []
    # a room with more members than this is not told of each join, leave, arrival and
    # departure (user_joined/user_left, user_status, presence); 0 = no limit
    announce_max_members: NonNegativeInt = 100
    namespaces: dict[str, NamespaceConfig] = {}

    def options(self, room: str) -> "RoomOptions":
        """Effective options of ``room``: its namespace's overrides on top of the defaults."""
        ns = self.namespaces.get(room.split(":", 1)[0]) if ":" in room else None
        def pick(name: str) -> Any:
            value = getattr(ns, name) if ns is not None else None
            return getattr(self, name) if value is None else value
        return RoomOptions(
            history_size=pick("history_size"),
            history_ttl=pick("history_ttl"),
            presence=pick("presence"),
            join_leave_events=pick("join_leave_events"),
            client_publish=pick("client_publish"),
            max_members=pick("max_members"),
            allowed_roles=tuple(pick("allowed_roles")),
            announce_max_members=pick("announce_max_members"),
        )


class FilterConfig(Section):
    enabled: bool = False
    action: Literal["reject", "mask"] = "reject"
    words: list[str] = []
    patterns: list[str] = []
    mask_char: str = Field("*", min_length=1, max_length=1)

    @field_validator("patterns")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {p!r}: {exc}") from None
        return v


class MessagesConfig(Section):
    max_message_length: PositiveInt = 4096
    echo_to_sender: bool = True
    max_invalid_frames: PositiveInt = 20
    invalid_frames_window: PositiveFloat = 60.0
    filter: FilterConfig = FilterConfig()


class ConversationsConfig(Section):
    """Private conversations: each pair of users' last messages, kept like a room's history."""

    history_size: NonNegativeInt = 100
    history_ttl: NonNegativeFloat = 604800.0
    max_per_user: PositiveInt = 100


class PermissionsConfig(Section):
    broadcast: list[str] = ["admin"]
    notify: list[str] = ["admin", "service"]
    #: roles whose POST /api/messages needs no open connection (any existing room, any user)
    post_without_connection: list[str] = ["admin", "service"]
    types: dict[str, list[str]] = {}


class ApiConfig(Section):
    admin_roles: list[str] = ["admin"]
    keys: list[str] = []
    page_size: PositiveInt = 50
    max_page_size: PositiveInt = 500
    max_body_size: PositiveInt = 65536

    @model_validator(mode="after")
    def _page_within_max(self) -> "ApiConfig":
        if self.page_size > self.max_page_size:
            raise FieldError("page_size", f"must be at most api.max_page_size ({self.max_page_size}), "
                             f"got {self.page_size}")
        return self


class MetricsConfig(Section):
    enabled: bool = True
    admin_only: bool = False


class RedisConfig(Section):
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "switchboard"
    # a Redis Cluster: url names one of its nodes (docs/deploy.md)
    cluster: bool = False
    # seconds a node that stopped without a word (SIGKILL, power loss) keeps its users online
    # and in their rooms before another node removes them
    node_ttl: PositiveFloat = 30.0

    @field_validator("url", mode="before")
    @classmethod
    def _url_given(cls, v: Any) -> Any:
        if v is None:  # ``url: null`` in a file: it must come from the environment
            raise ValueError("is required: set the REDIS_URL environment variable (or backend.redis.url)")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {describe(v)}")
        return v


class BackendConfig(Section):
    type: Literal["memory", "redis"] = "memory"
    sweep_interval: PositiveFloat = 60.0
    redis: RedisConfig = RedisConfig()


class PluginsConfig(Section):
    """``enabled`` plus one free-form section per plugin, validated by the plugin's own model."""

    enabled: list[str] = ["chat", "typing", "presence", "notification"]

    @model_validator(mode="after")
    def _sections(self) -> "PluginsConfig":
        for name, section in (self.model_extra or {}).items():
            if section is not None and not isinstance(section, dict):
                raise FieldError(name, f"must be a mapping (the plugin's options), got {describe(section)}")
        return self


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    access_log: bool = True

    @field_validator("level", "format", mode="before")
    @classmethod
    def _any_case(cls, v: Any, info: ValidationInfo) -> Any:
        choices = get_args(cls.model_fields[str(info.field_name)].annotation)
        return v.lower() if isinstance(v, str) and v.lower() in choices else v


class Config(Section):
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    security: SecurityConfig = SecurityConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    rooms: RoomsConfig = RoomsConfig()
    messages: MessagesConfig = MessagesConfig()
    conversations: ConversationsConfig = ConversationsConfig()
    permissions: PermissionsConfig = PermissionsConfig()
    api: ApiConfig = ApiConfig()
    metrics: MetricsConfig = MetricsConfig()
    backend: BackendConfig = BackendConfig()
    plugins: PluginsConfig = PluginsConfig()
    logging: LoggingConfig = LoggingConfig()

    def plugin_section(self, name: str) -> dict[str, Any]:
        """The raw ``plugins.<name>`` mapping as written (a copy; ``{}`` when absent)."""
        raw = (self.plugins.model_extra or {}).get(name)
        return dict(raw) if isinstance(raw, dict) else {}

    # the plugin sections validated by load_config(plugin_sections=...): key path -> model
    # instance, or the raw mapping of a plugin that declares no model
    _plugin_configs: dict[KeyPath, Any] = PrivateAttr(default_factory=dict)

    def plugin_config(self, path: KeyPath) -> BaseModel | dict[str, Any]:
        """The validated section at ``path`` (``("plugins", "poll")``, ``("presence",)``): the
        plugin's model instance, or a copy of the mapping as written when the plugin declares no
        model. KeyError for a path no enabled plugin claimed when the config was loaded (none
        is claimed when ``load_config`` ran without ``plugin_sections``)."""
        key = tuple(path)
        if key not in self._plugin_configs:
            claimed = ", ".join(".".join(p) for p in self._plugin_configs) or "none"
            raise KeyError(f"{'.'.join(key)}: no plugin section loaded there (loaded: {claimed})")
        value = self._plugin_configs[key]
        return dict(value) if isinstance(value, dict) else value

    @property
    def plugin_paths(self) -> tuple[KeyPath, ...]:
        """The key paths of the plugin sections :meth:`plugin_config` answers for."""
        return tuple(self._plugin_configs)

    def with_plugin_configs(self, sections: Mapping[KeyPath, Any]) -> "Config":
        """A copy of this config holding ``sections`` (key path -> validated section)."""
        copy = self.model_copy()
        copy._plugin_configs = {tuple(path): value for path, value in sections.items()}
        return copy
