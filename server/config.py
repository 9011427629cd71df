"""Typed, frozen configuration loaded from ``websocket.yaml`` plus environment overrides.

Every error names its key path (``rate_limit.burst: must be a positive integer, got -3``);
unknown keys are collected as warnings (fatal under ``check-config --strict``).
docs/configuration.md is the operator's reference.

Adding an option: give the field a type and a default in its section class below (a new
section is a ``Section`` subclass plus a field on ``Config``), then document it, commented with
its default and unit, in ``websocket.yaml`` and in the section's table of
``docs/configuration.md``; tests/test_config.py fails until both mention it. It is settable
from the environment as ``WS_<SECTION>_<KEY>`` with no further work. A check that involves
several fields is a ``model_validator`` raising :class:`FieldError` to blame one of them.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Mapping, Union, get_args, get_origin

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)
from pydantic.types import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from .errors import ConfigError
from .addresses import Origin

DEV_SECRET = "switchboard-dev-secret-change-me"


class FieldError(ValueError):
    """Raised by a model validator to blame one of the model's fields: the error's key path
    then ends with ``key`` (``server.pong_wait: ...`` rather than ``server: ...``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class Section(BaseModel):
    """Base for every config section: frozen, unknown keys kept aside for warnings, a section
    left empty in YAML (``presence:`` with nothing under it) takes its defaults, numbers are
    finite and ``true`` is not a number."""

    model_config = ConfigDict(extra="allow", frozen=True, validate_default=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_defaults(cls, data: Any) -> Any:
        return {} if data is None else data

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            kind = _optional_of(cls.model_fields[info.field_name].annotation)
            if kind is int or kind is float:
                noun = "an integer" if kind is int else "a number"
                raise ValueError(f"must be {noun}, got {_describe(value)}")
        return value


def _optional_of(annotation: Any) -> Any:
    """``X`` for ``X | None`` and for ``Annotated[X, ...]``; anything else unchanged."""
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            annotation = args[0]
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


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
    # "production" refuses settings only safe on a developer's machine (_environment_errors)
    environment: Literal["development", "production"] = "development"

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
            raise FieldError("pong_wait", f"must be greater than server.ping_period "
                             f"({self.ping_period:g}), got {self.pong_wait:g}")
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
    invalid_frames_window: PositiveFloat = 60.0
    filter: FilterConfig = FilterConfig()


class InboxConfig(Section):
    size: PositiveInt = 100
    ttl: PositiveFloat = 604800.0


class PresenceConfig(Section):
    enabled: bool = True
    grace_period: NonNegativeFloat = 5.0
    last_seen_ttl: PositiveFloat = 604800.0
    max_extra_bytes: PositiveInt = 512
    max_query_users: PositiveInt = 100


class TypingConfig(Section):
    timeout: PositiveFloat = 5.0
    messages_per_minute: PositiveInt = 60
    burst: PositiveInt = 10


class NotificationsConfig(Section):
    max_per_user: PositiveInt = 100
    ttl: PositiveFloat = 604800.0


class PermissionsConfig(Section):
    broadcast: list[str] = ["admin"]
    notify: list[str] = ["admin", "service"]
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
            raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {_describe(v)}")
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
                raise FieldError(name, f"must be a mapping (the plugin's options), got {_describe(section)}")
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
    inbox: InboxConfig = InboxConfig()
    presence: PresenceConfig = PresenceConfig()
    typing: TypingConfig = TypingConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    permissions: PermissionsConfig = PermissionsConfig()
    api: ApiConfig = ApiConfig()
    metrics: MetricsConfig = MetricsConfig()
    backend: BackendConfig = BackendConfig()
    plugins: PluginsConfig = PluginsConfig()
    logging: LoggingConfig = LoggingConfig()

    def plugin_section(self, name: str) -> dict[str, Any]:
        raw = (self.plugins.model_extra or {}).get(name)
        return dict(raw) if isinstance(raw, dict) else {}


# --- loading -------------------------------------------------------------------------------

ENV_PREFIX = "WS_"
#: shorthand variables and the key each sets; a WS_ variable for the same key wins over them
ENV_SHORTHANDS: dict[str, tuple[str, ...]] = {"JWT_SECRET": ("auth", "secret"),
                                              "REDIS_URL": ("backend", "redis", "url")}
#: the shortest HMAC secret RFC 7518 (section 3.2) allows, in bytes
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}

KeyPath = tuple[str, ...]


@dataclass
class LoadedConfig:
    config: Config
    path: Path | None
    warnings: list[str] = field(default_factory=list)
    #: the environment variables that set something (names only: values may be secrets)
    env: list[str] = field(default_factory=list)


def _describe(value: Any) -> str:
    """A value as an operator wrote it: YAML's null, true and false; strings quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def _field_type(root: Any, loc: tuple[Any, ...]) -> Any:
    """The type declared at ``loc`` under the model ``root``; None when it cannot tell."""
    kind = root
    for part in loc:
        kind = _optional_of(kind)
        if _is_model(kind):
            info = kind.model_fields.get(str(part))
            if info is None:
                return None
            kind = info.annotation
        elif get_origin(kind) in (dict, list):
            kind = get_args(kind)[-1]
        else:
            return None
    return _optional_of(kind)


_MUST_BE = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
    "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _format_error(err: Mapping[str, Any], kind: Any = None) -> str:
    """One pydantic error as the rest of a ``key.path: ...`` line; ``kind`` is the field's
    declared type when known (it picks "integer" or "number")."""
    code, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    got = f", got {_describe(value)}"
    if code == "missing":
        return "is required"
    if code == "extra_forbidden":
        return "unknown key"
    if code == "invalid_key":
        return "keys must be strings"
    if code == "value_error":
        return str(ctx.get("error", err["msg"]))
    if code in _MUST_BE:
        hint = " (a key with nothing after it is null; write [] for an empty list)" \
            if code == "list_type" and value is None else ""
        return f"must be {_MUST_BE[code]}{got}{hint}"
    if code == "literal_error":
        return f"must be one of {ctx.get('expected')}{got}"
    if code == "greater_than" and ctx.get("gt") == 0:
        integer = kind is int or (kind is None and isinstance(value, int))
        return f"must be a positive {'integer' if integer else 'number'}{got}"
    if code == "greater_than_equal" and ctx.get("ge") == 0:
        return f"must be zero or more{got}"
    bounds = {"greater_than": "greater than", "greater_than_equal": "at least",
              "less_than": "less than", "less_than_equal": "at most"}
    if code in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"must be {bounds[code]} {limit}{got}"
    if code in ("string_too_short", "string_too_long"):
        size = ctx.get("min_length") if code == "string_too_short" else ctx.get("max_length")
        return f"must be {'at least' if code == 'string_too_short' else 'at most'} {size} " \
               f"character(s) long{got}"
    return f"{err['msg'][0].lower()}{err['msg'][1:]}{got}"


def _key_path(loc: tuple[Any, ...]) -> str:
    """``('rate_limit', 'burst')`` -> ``rate_limit.burst``; list positions as ``[0]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) and text else f".{part}" if text else str(part)
    return text or "(top level)"


def _message(err: Mapping[str, Any], prefix: tuple[Any, ...], root: Any,
             sources: Mapping[KeyPath, str]) -> str:
    loc = tuple(err["loc"])
    blamed = (err.get("ctx") or {}).get("error")
    if isinstance(blamed, FieldError):
        loc += (blamed.key,)
    text = f"{_key_path(prefix + loc)}: {_format_error(err, _field_type(root, loc))}"
    var = next((name for path, name in sources.items() if loc[:len(path)] == path), None)
    return f"{text} (from {var})" if var else text


def validation_messages(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    """Each error of ``exc`` as ``key.path: problem``, the path under ``prefix``."""
    return [_message(e, prefix, None, {}) for e in exc.errors()]


# --- reading the file ------------------------------------------------------------------------

_TOP_LEVEL_NOUNS = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def _read(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The file's top-level mapping and the errors YAML lets pass (keys given twice). Raises
    ConfigError when the file cannot be read or parsed."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: not UTF-8 text (bad byte at offset {exc.start})"]) from None
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: YAML syntax error{_yaml_problem(exc)}"]) from None
    finally:
        loader.dispose()
    if node is None or data is None:
        return {}, []
    if not isinstance(data, dict):
        noun = _TOP_LEVEL_NOUNS.get(type(data), type(data).__name__)
        raise ConfigError([f"{source}: must be a mapping of sections (server:, auth:, ...), got {noun}"])
    return data, _twice(node, (), set())


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """`` at line 3, column 2: <problem> (<context>, line 1)``; lines and columns from 1."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    text = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    text += f": {getattr(exc, 'problem', None) or exc}"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:
        text += f" ({context}, line {context_mark.line + 1})" if context_mark else f" ({context})"
    return text


def _twice(node: yaml.Node, path: KeyPath, seen: set[int]) -> list[str]:
    """Keys given twice in one mapping (YAML would silently keep the last)."""
    if id(node) in seen:
        return []
    seen.add(id(node))
    found: list[str] = []
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            line = key.start_mark.line + 1
            if name in lines and name != "<<":
                found.append(f"{_key_path(path + (name,))}: given twice (lines {lines[name]} and "
                             f"{line}); keep one")
            lines.setdefault(name, line)
            found += _twice(value, path + (name,), seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found += _twice(item, path, seen)
    return found


# --- the environment -------------------------------------------------------------------------

def _resolve(model: Any, rest: str) -> tuple[KeyPath, Any] | None:
    """The key path and type of the option spelt ``rest`` (lowercase, after ``WS_``) under
    ``model``: ``rate_limit_messages_per_minute`` -> ``('rate_limit', 'messages_per_minute')``,
    ``backend_redis_url`` -> ``('backend', 'redis', 'url')``. Only options, not whole sections."""
    fields = model.model_fields
    if rest in fields and not _is_model(fields[rest].annotation):
        return (rest,), fields[rest].annotation
    for name in sorted(fields, key=len, reverse=True):
        kind = fields[name].annotation
        if rest.startswith(name + "_") and _is_model(kind):
            found = _resolve(kind, rest[len(name) + 1:])
            if found is not None:
                return (name, *found[0]), found[1]
    return None


def _env_names(model: Any, prefix: str) -> list[str]:
    """Every ``WS_`` variable name ``model`` accepts (for "did you mean")."""
    names: list[str] = []
    for name, info in model.model_fields.items():
        spelt = f"{prefix}_{name.upper()}"
        names += _env_names(info.annotation, spelt) if _is_model(info.annotation) else [spelt]
    return names


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _env_value(text: str, annotation: Any) -> Any:
    """An environment string as the option's type wants it: strings verbatim (empty is null for
    an optional one), lists comma-separated or in YAML flow style (``[a, b]``), anything else
    (numbers, booleans, mappings) read as YAML."""
    kind = _optional_of(annotation)
    if kind is str:
        return None if text == "" and kind is not annotation else text
    if get_origin(kind) is list and not text.lstrip().startswith("["):
        return [item.strip() for item in text.split(",") if item.strip()]
    return _yaml_value(text)


def _plugin_names(raw: dict[str, Any]) -> dict[str, str]:
    """Plugins that may take ``WS_PLUGINS_<NAME>_<KEY>``: the enabled ones and those with a
    section, by their spelling in a variable name."""
    section = raw.get("plugins")
    section = section if isinstance(section, dict) else {}
    enabled = section.get("enabled", PluginsConfig.model_fields["enabled"].default)
    names = [n for n in section if n != "enabled"]
    names += [n for n in enabled if isinstance(n, str) and ":" not in n] if isinstance(enabled, list) else []
    return {str(n).lower().replace("-", "_"): str(n) for n in names}


def _plugin_path(var: str, plugins: Mapping[str, str]) -> KeyPath | None:
    rest = var[len(ENV_PREFIX):].lower()
    if not rest.startswith("plugins_"):
        return None
    rest = rest[len("plugins_"):]
    for spelt in sorted(plugins, key=len, reverse=True):
        if rest.startswith(spelt + "_") and len(rest) > len(spelt) + 1:
            return "plugins", plugins[spelt], rest[len(spelt) + 1:]
    return None


def _put(raw: dict[str, Any], path: KeyPath, value: Any) -> bool:
    """Set ``path`` in ``raw``, creating mappings on the way; a mapping value is merged. False
    when the file has something other than a mapping on the way (validation reports that)."""
    target = raw
    for key in path[:-1]:
        if target.get(key) is None:
            target[key] = {}
        target = target[key]
        if not isinstance(target, dict):
            return False
    if isinstance(value, dict) and isinstance(target.get(path[-1]), dict):
        _deep_merge(target[path[-1]], value)
    else:
        target[path[-1]] = value
    return True


def apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> tuple[dict[KeyPath, str], list[str]]:
    """Apply ``JWT_SECRET`` and ``REDIS_URL``, then ``WS_<SECTION>_<KEY>`` (and
    ``WS_PLUGINS_<PLUGIN>_<KEY>``) onto ``raw`` in place. Returns the key path each variable
    set and a warning for each ``WS_`` variable that matches no option."""
    sources: dict[KeyPath, str] = {}
    for name, path in ENV_SHORTHANDS.items():
        if env.get(name) and _put(raw, path, env[name]):
            sources[path] = name
    unmatched: list[str] = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        found = _resolve(Config, name[len(ENV_PREFIX):].lower())
        if found is None:
            unmatched.append(name)
        elif _put(raw, found[0], _env_value(env[name], found[1])):
            sources[found[0]] = name
    warnings: list[str] = []
    plugins = _plugin_names(raw)
    for name in unmatched:
        plugin_path = _plugin_path(name, plugins)
        if plugin_path is None:
            close = difflib.get_close_matches(name, _env_names(Config, "WS"), n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else " (the form is WS_<SECTION>_<KEY>)"
            warnings.append(f"{name}: environment variable matches no setting{hint}")
        elif _put(raw, plugin_path, _yaml_value(env[name])):
            sources[plugin_path] = name
    return sources, warnings


# --- checks beyond the types -----------------------------------------------------------------

def _unknown_keys(raw: Any, model: Any, path: KeyPath = ()) -> list[str]:
    """Keys of ``raw`` that ``model`` does not declare, with the nearest known key as a hint.
    Plugin sections are left to each plugin's own model."""
    if not isinstance(raw, dict):
        return []
    fields = model.model_fields
    found: list[str] = []
    for key, value in raw.items():
        info = fields.get(key) if isinstance(key, str) else None
        if info is None:
            if model is not PluginsConfig:
                close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.7)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                what = "unknown section" if model is Config else "unknown key"
                found.append(f"{_key_path(path + (str(key),))}: {what}{hint}")
            continue
        kind = _optional_of(info.annotation)
        if _is_model(kind):
            found += _unknown_keys(value, kind, path + (key,))
        elif get_origin(kind) is dict and _is_model(get_args(kind)[1]) and isinstance(value, dict):
            for name, item in value.items():
                found += _unknown_keys(item, get_args(kind)[1], path + (key, str(name)))
    return found


def _advice(config: Config) -> list[str]:
    """Settings that are valid but almost certainly not what the operator meant."""
    auth, sec = config.auth, config.security
    found: list[str] = []
    need = _HMAC_MIN_BYTES.get(auth.algorithm, 0)
    if auth.secret and len(auth.secret.encode()) < need:
        found.append(f"auth.secret: {len(auth.secret.encode())} bytes is too short for {auth.algorithm}; "
                     f"use at least {need} random bytes (RFC 7518, section 3.2)")
    if auth.jwks_url and auth.jwks_url.startswith("http://"):
        found.append("auth.jwks_url: plain http lets anyone on the way swap the signing keys; use https")
    if auth.jwks_url and auth.public_key_file:
        found.append("auth.public_key_file: ignored, because auth.jwks_url is set")
    if sec.ip_whitelist_enabled and not sec.ip_whitelist:
        found.append("security.ip_whitelist: empty while ip_whitelist_enabled is true, so every "
                     "connection is refused")
    if sec.check_origin and not sec.allowed_origins:
        found.append("security.allowed_origins: empty while check_origin is true, so every "
                     "connection is refused")
    return found


def _environment_errors(config: Config, sources: Mapping[KeyPath, str]) -> list[str]:
    """Settings refused by ``server.environment: production`` (safe only on a developer's
    machine), and a dev login that cannot sign tokens."""
    auth = config.auth
    found: list[tuple[KeyPath, str]] = []
    if auth.dev_login and not auth.algorithm.startswith("HS"):
        found.append((("auth", "dev_login"), f"needs an HS algorithm: with {auth.algorithm} the "
                      "server holds only a public key and cannot sign tokens"))
    if config.server.environment == "production":
        if auth.dev_login:
            found.append((("auth", "dev_login"), "must be false when server.environment is "
                          "production: POST /api/dev/token would give a token to anyone who asks"))
        if auth.algorithm.startswith("HS") and auth.secret == DEV_SECRET:
            found.append((("auth", "secret"), "is the public development default, refused when "
                          "server.environment is production: set the JWT_SECRET environment variable"))
    return [f"{_key_path(path)}: {text}" + (f" (from {sources[path]})" if path in sources else "")
            for path, text in found]


# --- load_config -----------------------------------------------------------------------------

def _overridden(overrides: Mapping[str, Any], path: KeyPath) -> bool:
    node: Any = overrides
    for key in path:
        if not isinstance(node, Mapping):
            return True
        if key not in node:
            return False
        node = node[key]
    return True


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedConfig:
    """Load and validate the config. Later layers win: the built-in defaults, the file (when
    ``path`` is given), the environment (``env``, default ``os.environ``), then ``overrides``
    (a nested mapping: command-line flags, tests). Raises ``ConfigError`` listing every error,
    with the warnings found so far."""
    env = os.environ if env is None else env
    file_path = Path(path) if path is not None else None
    raw, errors = _read(file_path) if file_path is not None else ({}, [])
    sources, warnings = apply_env(raw, env)
    if overrides:
        _deep_merge(raw, copy.deepcopy(dict(overrides)))
        sources = {p: name for p, name in sources.items() if not _overridden(overrides, p)}
    warnings += _unknown_keys(raw, Config)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        errors += [_message(e, (), Config, sources) for e in exc.errors()]
        raise ConfigError(errors, warnings) from None
    errors += _environment_errors(config, sources)
    if errors:
        raise ConfigError(errors, warnings)
    return LoadedConfig(config, file_path, warnings + _advice(config), sorted(set(sources.values())))


def _deep_merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value
