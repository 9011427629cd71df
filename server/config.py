"""Typed, frozen configuration loaded from ``websocket.yaml`` plus environment overrides.

Every error names its key path (``rate_limit.burst: must be a positive integer, got -3``);
unknown keys are collected as warnings (fatal under ``check-config --strict``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.types import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from .errors import ConfigError

DEV_SECRET = "switchboard-dev-secret-change-me"


class Section(BaseModel):
    """Base for every config section: frozen, unknown keys kept aside for warnings."""

    model_config = ConfigDict(extra="allow", frozen=True, validate_default=True)


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
    trusted_proxies: list[str] = []
    node_id: str = ""

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

    @model_validator(mode="after")
    def _pong_after_ping(self) -> "ServerConfig":
        if self.pong_wait <= self.ping_period:
            raise ValueError(
                f"pong_wait ({self.pong_wait}) must be greater than ping_period ({self.ping_period})"
            )
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

    @model_validator(mode="after")
    def _key_material(self) -> "AuthConfig":
        if self.algorithm.startswith("HS"):
            if not self.secret:
                raise ValueError(f"auth.secret (or JWT_SECRET) is required for {self.algorithm}")
        elif not (self.public_key_file or self.jwks_url):
            raise ValueError(f"{self.algorithm} needs auth.public_key_file or auth.jwks_url")
        return self


class SecurityConfig(Section):
    ip_whitelist_enabled: bool = False
    ip_whitelist: list[str] = []
    ip_blacklist_enabled: bool = False
    ip_blacklist: list[str] = []
    check_origin: bool = False
    allowed_origins: list[str] = []
    max_connections_per_ip: NonNegativeInt = 100
    max_connections_per_user: NonNegativeInt = 10
    connect_rate_per_ip: NonNegativeInt = 300

    @field_validator("ip_whitelist", "ip_blacklist")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return _check_cidrs(v)


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
        )


@dataclass(frozen=True, slots=True)
class RoomOptions:
    history_size: int
    history_ttl: float
    presence: bool
    join_leave_events: bool
    client_publish: bool
    max_members: int
    allowed_roles: tuple[str, ...]


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
    filter: FilterConfig = FilterConfig()


class InboxConfig(Section):
    size: PositiveInt = 100
    ttl: PositiveFloat = 604800.0


class PresenceConfig(Section):
    enabled: bool = True
    grace_period: NonNegativeFloat = 5.0


class TypingConfig(Section):
    timeout: PositiveFloat = 5.0
    messages_per_minute: PositiveInt = 60
    burst: PositiveInt = 10


class PermissionsConfig(Section):
    broadcast: list[str] = ["admin"]
    notify: list[str] = ["admin", "service"]
    types: dict[str, list[str]] = {}


class ApiConfig(Section):
    admin_roles: list[str] = ["admin"]
    keys: list[str] = []


class RedisConfig(Section):
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "switchboard"


class BackendConfig(Section):
    type: Literal["memory", "redis"] = "memory"
    redis: RedisConfig = RedisConfig()


class PluginsConfig(Section):
    """``enabled`` plus one free-form section per plugin, validated by the plugin's own model."""

    enabled: list[str] = ["chat"]


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    access_log: bool = True


class Config(Section):
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    security: SecurityConfig = SecurityConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    rooms: RoomsConfig = RoomsConfig()
    messages: MessagesConfig = MessagesConfig()
    inbox: InboxConfig = InboxConfig()
    presence: PresenceConfig = PresenceConfig()
    typing: TypingConfig = TypingConfig()
    permissions: PermissionsConfig = PermissionsConfig()
    api: ApiConfig = ApiConfig()
    backend: BackendConfig = BackendConfig()
    plugins: PluginsConfig = PluginsConfig()
    logging: LoggingConfig = LoggingConfig()

    def plugin_section(self, name: str) -> dict[str, Any]:
        raw = (self.plugins.model_extra or {}).get(name)
        return dict(raw) if isinstance(raw, dict) else {}


# --- loading -------------------------------------------------------------------------------

ENV_PREFIX = "WS_"
SECTIONS = tuple(sorted(Config.model_fields, key=len, reverse=True))


@dataclass
class LoadedConfig:
    config: Config
    path: Path | None
    warnings: list[str] = field(default_factory=list)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _format_error(err: Mapping[str, Any]) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "missing":
        return "is required"
    if kind == "greater_than" and ctx.get("gt") == 0:
        noun = "integer" if isinstance(value, int) else "number"
        return f"must be a positive {noun}, got {_describe(value)}"
    if kind == "greater_than_equal" and ctx.get("ge") == 0:
        return f"must be zero or more, got {_describe(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, got {_describe(value)}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, got {_describe(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {_describe(value)}"
    if kind == "string_type":
        return f"must be a string, got {_describe(value)}"
    if kind == "list_type":
        return f"must be a list, got {_describe(value)}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping, got {_describe(value)}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {_describe(value)}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg'][0].lower()}{err['msg'][1:]}, got {_describe(value)}"


def _key_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def validation_messages(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    return [f"{_key_path(prefix + tuple(e['loc']))}: {_format_error(e)}" for e in exc.errors()]


def _unknown_keys(model: BaseModel, path: tuple[str, ...] = ()) -> list[str]:
    found: list[str] = []
    if isinstance(model, PluginsConfig):
        extra_ok = True  # plugin sections are checked by the registry against each plugin's model
    else:
        extra_ok = False
    if model.model_extra and not extra_ok:
        found += [_key_path(path + (k,)) for k in model.model_extra]
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            found += _unknown_keys(value, path + (name,))
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, BaseModel):
                    found += _unknown_keys(v, path + (name, str(k)))
    return found


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{source}: YAML syntax error{where}: {problem}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping, got {type(data).__name__}"])
    return data


def apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Apply ``WS_<SECTION>_<KEY>``, ``JWT_SECRET`` and ``REDIS_URL`` onto ``raw`` in place.

    Returns (errors, warnings).
    """
    errors: list[str] = []
    warnings: list[str] = []
    if env.get("JWT_SECRET"):
        raw.setdefault("auth", {})["secret"] = env["JWT_SECRET"]
    if env.get("REDIS_URL"):
        raw.setdefault("backend", {}).setdefault("redis", {})["url"] = env["REDIS_URL"]
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        key = rest[len(section) + 1:] if section else ""
        model = Config.model_fields[section].annotation if section else None
        if not section or not key or key not in getattr(model, "model_fields", {}):
            warnings.append(f"{name}: no such setting (expected WS_<SECTION>_<KEY>)")
            continue
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            errors.append(f"{section}: must be a mapping to take {name}")
            continue
        target[key] = parsed
    return errors, warnings


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedConfig:
    """Load and validate the config: file (optional), then ``overrides`` (a nested mapping,
    for tests and the CLI), then the environment. Raises ``ConfigError`` listing every error."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    source = "<defaults>"
    file_path: Path | None = None
    if path is not None:
        file_path = Path(path)
        source = str(file_path)
        try:
            text = file_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from None
        raw = _parse_yaml(text, source)
    if overrides:
        _deep_merge(raw, overrides)
    errors, warnings = apply_env(raw, env)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(errors + validation_messages(exc), warnings) from None
    if errors:
        raise ConfigError(errors, warnings)
    warnings += [f"{key}: unknown key" for key in _unknown_keys(config)]
    return LoadedConfig(config, file_path, warnings)


def _deep_merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value
