"""The config loader (``server/config/``): every class of error with its key path, warnings
for unknown keys, environment overrides, plugin sections, and the shipped files
(``websocket.yaml`` documents every option; ``config/*.yaml`` are valid). The CLI around it is
tests/test_check_config.py."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import UnionType
from typing import Any, Iterator, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel, PositiveInt, ValidationError, create_model

from plugins.presence import PresenceConfig
from server.config import DEV_SECRET, Config, LoadedConfig, load_config, validation_messages
from server.errors import ConfigError, PluginError
from server.plugin_api import PluginConfig
from server.registry import available_plugins, load_plugin_class, section_path
from server.registry import load as load_with_plugins

ROOT = Path(__file__).resolve().parent.parent
LONG_SECRET = "k" * 40
PRODUCTION_ENV = {"JWT_SECRET": LONG_SECRET, "REDIS_URL": "redis://:pw@redis.internal:6379/0"}


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> LoadedConfig:
    path = tmp_path / "websocket.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_config(path, env=env or {})


def errors(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return info.value.errors


# --- the models, walked ---------------------------------------------------------------------
def _plain(kind: Any) -> Any:
    if get_origin(kind) in (Union, UnionType):
        args = [a for a in get_args(kind) if a is not type(None)]
        return args[0] if len(args) == 1 else kind
    return kind


def _is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def _entry_model(kind: Any) -> Any:
    """The model of each entry of a ``dict[str, Model]`` option, else None."""
    if get_origin(kind) is dict and _is_model(get_args(kind)[1]):
        return get_args(kind)[1]
    return None


def _builtin_sections() -> dict[tuple[str, ...], Any]:
    """The built-in plugins' sections (``presence``, ``typing``...) and their models."""
    installed = available_plugins()
    classes = [load_plugin_class(name, installed) for name in Config().plugins.enabled]
    return {section_path(cls): cls.Config for cls in classes if cls.section}


#: the whole file's schema: the core's sections and the built-in plugins' top-level ones
DOCUMENTED = create_model("Documented", __base__=Config, **{
    path[0]: (model, model()) for path, model in _builtin_sections().items()})


def option_paths(model: Any = DOCUMENTED, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every option as a key path; entries of a mapping of sections as ``*``
    (``rooms.namespaces.*.history_size``)."""
    for name, info in model.model_fields.items():
        kind = _plain(info.annotation)
        if _is_model(kind):
            yield from option_paths(kind, prefix + (name,))
            continue
        yield prefix + (name,)
        if _entry_model(kind) is not None:
            yield from option_paths(_entry_model(kind), prefix + (name, "*"))


def test_the_walk_sees_nested_and_mapped_options() -> None:
    paths = {".".join(p) for p in option_paths()}
    assert {"rate_limit.burst", "messages.filter.patterns", "backend.redis.url",
            "rate_limit.per_type.*.burst", "rooms.namespaces.*.history_size",
            "presence.grace_period", "typing.timeout", "notifications.ttl", "inbox.size"} <= paths


# --- the shipped files ----------------------------------------------------------------------
def test_websocket_yaml_is_exactly_the_built_in_defaults() -> None:
    loaded = load_with_plugins(ROOT / "websocket.yaml", env={})
    assert {k: getattr(loaded.config, k) for k in Config.model_fields} == dict(Config())
    for path, model in _builtin_sections().items():
        assert loaded.config.plugin_config(path) == model(), path
    assert loaded.config.plugins.enabled == ["chat", "typing", "presence", "notification"]
    assert loaded.config.auth.secret == DEV_SECRET
    assert loaded.warnings == []


def _comment_above(lines: list[str], line: int) -> list[str]:
    """The comment lines right above ``line`` (0-based), '#' removed, indentation kept."""
    found: list[str] = []
    while line > 0 and lines[line - 1].lstrip().startswith("#"):
        line -= 1
        found.insert(0, lines[line].lstrip()[1:])
    return found


def _example(comment: list[str]) -> Any:
    """The YAML after 'Example:' in a comment block."""
    at = next(i for i, text in enumerate(comment) if "Example:" in text)
    return yaml.safe_load(textwrap.dedent("\n".join(comment[at + 1:])))


def _undocumented(model: Any, node: yaml.MappingNode, path: tuple[str, ...],
                  lines: list[str]) -> Iterator[str]:
    keys = {k.value: (k, v) for k, v in node.value}
    for name, info in model.model_fields.items():
        where = ".".join(path + (name,))
        if name not in keys:
            yield f"{where}: not in websocket.yaml"
            continue
        key, value = keys[name]
        comment = _comment_above(lines, key.start_mark.line)
        kind = _plain(info.annotation)
        if not comment:
            yield f"{where}: no comment above it"
        if _is_model(kind):
            yield from _undocumented(kind, value, path + (name,), lines)
            continue
        if not any("Default:" in text for text in comment):
            yield f"{where}: its comment does not give the default ('Default: ...')"
        entry = _entry_model(kind)
        if entry is not None and comment:
            # a mapping of sections is empty by default: its example must show every option
            try:
                example = _example(comment)[name]
            except (StopIteration, KeyError, TypeError, yaml.YAMLError):
                yield f"{where}: no 'Example:' showing '{name}:' with entries in its comment"
                continue
            shown = {key for item in example.values() for key in item}
            for missing in sorted(set(entry.model_fields) - shown):
                yield f"{where}: its example does not show {missing}"
            nested: dict[str, Any] = {name: example}
            for part in reversed(path):
                nested = {part: nested}
            try:
                Config.model_validate(nested)
            except ValidationError as exc:
                yield f"{where}: its example is invalid: {validation_messages(exc)}"


def test_websocket_yaml_documents_every_option_with_its_default() -> None:
    text = (ROOT / "websocket.yaml").read_text(encoding="utf-8")
    problems = list(_undocumented(DOCUMENTED, yaml.compose(text), (), text.splitlines()))
    assert problems == [], "websocket.yaml must list and comment every option:\n" + "\n".join(problems)


def test_the_documentation_check_catches_a_missing_comment() -> None:
    text = "server:\n  # Address. Default: 127.0.0.1\n  host: 127.0.0.1\n  port: 8000\n"
    problems = list(_undocumented(Config, yaml.compose(text), (), text.splitlines()))
    assert "server.host: no comment above it" not in problems
    assert "server.port: no comment above it" in problems
    assert "server.ws_path: not in websocket.yaml" in problems
    assert "auth: not in websocket.yaml" in problems


def test_docs_have_a_row_for_every_option() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    chapters = {part.split("`")[1]: part for part in docs.split("\n## ")[1:] if part.startswith("`")}
    missing = []
    for path in option_paths():
        chapter = chapters.get(path[0], "")
        if f"| `{'.'.join(path[1:])}` |" not in chapter:
            missing.append(".".join(path))
    assert missing == [], "docs/configuration.md has no table row for: " + ", ".join(missing)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "config").glob("*.yaml")))
def test_example_configs_are_valid_without_warnings(name: str) -> None:
    loaded = load_with_plugins(ROOT / "config" / name, env=PRODUCTION_ENV)
    assert loaded.warnings == []


def test_production_example_takes_its_secrets_from_the_environment_only() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "config" / "production.yaml", env={})
    assert info.value.errors == [
        "auth.secret: is required for HS256: set the JWT_SECRET environment variable (or auth.secret)",
        "backend.redis.url: is required: set the REDIS_URL environment variable (or backend.redis.url)",
    ]
    config = load_config(ROOT / "config" / "production.yaml", env=PRODUCTION_ENV).config
    assert config.auth.secret == LONG_SECRET
    assert config.backend.redis.url == PRODUCTION_ENV["REDIS_URL"]
    assert (config.backend.type, config.security.check_origin, config.logging.format) == ("redis", True, "json")
    assert config.server.trusted_proxies


def test_development_example_is_loose_and_readable() -> None:
    config = load_config(ROOT / "config" / "development.yaml", env={}).config
    assert config.logging.format == "console" and config.auth.dev_login
    assert config.rate_limit.messages_per_minute > Config().rate_limit.messages_per_minute
    assert config.backend.type == "memory"


# --- no file, empty file, not a mapping -------------------------------------------------------
def test_no_file_means_the_defaults() -> None:
    loaded = load_config(None, env={})
    assert loaded.config == Config() and loaded.warnings == [] and loaded.env == []


@pytest.mark.parametrize("text", ["", "# only comments\n", "---\n", "rooms:\nserver:\n"])
def test_empty_file_or_empty_sections_mean_the_defaults(tmp_path: Path, text: str) -> None:
    assert load(tmp_path, text).config == Config()


def test_an_empty_plugin_section_means_its_defaults(tmp_path: Path) -> None:
    path = tmp_path / "websocket.yaml"
    path.write_text("presence:\nserver:\n", encoding="utf-8")
    loaded = load_with_plugins(path, env={})
    assert loaded.config.plugin_config(("presence",)) == PresenceConfig() and loaded.warnings == []


@pytest.mark.parametrize("text, noun", [("- server\n- auth\n", "a list"), ("just words\n", "a string"),
                                        ("42\n", "a number")])
def test_a_file_that_is_not_a_mapping(tmp_path: Path, text: str, noun: str) -> None:
    [error] = errors(tmp_path, text)
    assert error.endswith(f"websocket.yaml: must be a mapping of sections (server:, auth:, ...), got {noun}")


def test_a_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    assert errors(tmp_path, "server: 5\nrate_limit: [1, 2]\n") == [
        "server: must be a mapping, got 5", "rate_limit: must be a mapping, got [1, 2]"]


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml", env={})
    assert info.value.errors == [f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"]
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("server:\n  host: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(latin, env={})
    assert info.value.errors == [f"{latin}: not UTF-8 text (bad byte at offset 19)"]


# --- YAML errors ----------------------------------------------------------------------------
def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    [error] = errors(tmp_path, "server:\n  port: 80\n host: x\n")
    assert error.startswith(f"{tmp_path / 'websocket.yaml'}: YAML syntax error at line 3, column 2: ")
    [error] = errors(tmp_path, "rooms:\n  default_rooms: [a, b\n")
    assert "YAML syntax error at line 3, column 1: " in error


def test_a_key_given_twice_is_an_error(tmp_path: Path) -> None:
    text = "server:\n  port: 80\nauth: {}\nserver:\n  host: x\n  host: y\n"
    assert errors(tmp_path, text) == ["server: given twice (lines 1 and 4); keep one",
                                      "server.host: given twice (lines 5 and 6); keep one"]


def test_yaml_tags_that_run_code_are_refused(tmp_path: Path) -> None:
    [error] = errors(tmp_path, "server:\n  host: !!python/object/apply:os.system [echo hi]\n")
    assert "YAML syntax error at line 2, column 9: could not determine a constructor" in error


# --- each class of value error ----------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    # the example of the issue, word for word
    ("rate_limit: {burst: -3}", "rate_limit.burst: must be a positive integer, got -3"),
    ("server: {write_timeout: -3}", "server.write_timeout: must be a positive number, got -3"),
    ("security: {max_connections_per_ip: -1}",
     "security.max_connections_per_ip: must be zero or more, got -1"),
    ("server: {port: 70000}", "server.port: must be at most 65535, got 70000"),
    # wrong types
    ("server: {port: eighty}", "server.port: must be an integer, got 'eighty'"),
    ("server: {port: 80.5}", "server.port: must be an integer, got 80.5"),
    ("server: {max_connections: true}", "server.max_connections: must be an integer, got true"),
    ("rooms: {namespaces: {vip: {max_members: true}}}",
     "rooms.namespaces.vip.max_members: must be an integer, got true"),
    ("server: {ping_period: .inf}", "server.ping_period: must be a finite number, got inf"),
    ("server: {compression: maybe}", "server.compression: must be true or false, got 'maybe'"),
    ("server: {host: 8000}", "server.host: must be a string, got 8000"),
    ("rooms: {default_rooms: general}", "rooms.default_rooms: must be a list, got 'general'"),
    ("rooms:\n  default_rooms:\n",
     "rooms.default_rooms: must be a list, got null (a key with nothing after it is null; "
     "write [] for an empty list)"),
    ("rooms: {allowed_roles: [admin, 7]}", "rooms.allowed_roles[1]: must be a string, got 7"),
    ("rate_limit: {per_type: [typing]}", "rate_limit.per_type: must be a mapping, got ['typing']"),
    ("plugins: {chat: 5}", "plugins.chat: must be a mapping (the plugin's options), got 5"),
    # enums
    ("backend: {type: mongo}", "backend.type: must be one of 'memory' or 'redis', got 'mongo'"),
    ("auth: {algorithm: none}",
     "auth.algorithm: must be one of 'HS256', 'HS384', 'HS512', 'RS256' or 'ES256', got 'none'"),
    ("logging: {level: loud}", "logging.level: must be one of 'debug', 'info', 'warning' or 'error', got 'loud'"),
    # CIDR, regex, URL, path, length
    ("security: {ip_whitelist: [10.0.0.0/33]}",
     "security.ip_whitelist: not a valid IP address or CIDR: '10.0.0.0/33'"),
    ("server: {trusted_proxies: [proxy.internal]}",
     "server.trusted_proxies: not a valid IP address or CIDR: 'proxy.internal'"),
    ("messages: {filter: {patterns: ['ok', '(unclosed']}}",
     "messages.filter.patterns: invalid regular expression '(unclosed': missing ), unterminated "
     "subpattern at position 0"),
    ("backend: {redis: {url: 'http://redis'}}",
     "backend.redis.url: must be a redis://, rediss:// or unix:// URL, got 'http://redis'"),
    ("auth: {algorithm: RS256, jwks_url: 'keys.json'}", "auth.jwks_url: must be an http(s) URL, got 'keys.json'"),
    ("server: {ws_path: ws}", "server.ws_path: must start with '/', got 'ws'"),
    ("messages: {filter: {mask_char: '**'}}",
     "messages.filter.mask_char: must be at most 1 character(s) long, got '**'"),
    # a value that depends on another
    ("server: {ping_period: 30, pong_wait: 30}",
     "server.pong_wait: must be greater than server.ping_period (30), got 30"),
    ("rate_limit: {per_type: {typing: {burst: 5}}}", "rate_limit.per_type.typing.messages_per_minute: is required"),
    # missing key material
    ("auth: {secret: null}",
     "auth.secret: is required for HS256: set the JWT_SECRET environment variable (or auth.secret)"),
    ("auth: {algorithm: HS512, secret: ''}",
     "auth.secret: is required for HS512: set the JWT_SECRET environment variable (or auth.secret)"),
    ("auth: {algorithm: ES256}",
     "auth.algorithm: ES256 needs a public key: set auth.public_key_file or auth.jwks_url"),
    ("backend: {redis: {url: null}}",
     "backend.redis.url: is required: set the REDIS_URL environment variable (or backend.redis.url)"),
])
def test_each_kind_of_error_names_its_key_path(tmp_path: Path, text: str, expected: str) -> None:
    assert errors(tmp_path, text + "\n") == [expected]


def test_every_error_is_listed_at_once(tmp_path: Path) -> None:
    text = """\
        server:
          port: -1
          compression: maybe
        auth:
          algorithm: RS256
        rate_limit:
          burst: -3
        security:
          ip_blacklist: [not-an-ip]
        backend:
          type: mongo
        """
    assert errors(tmp_path, text) == [
        "server.port: must be zero or more, got -1",
        "server.compression: must be true or false, got 'maybe'",
        "auth.algorithm: RS256 needs a public key: set auth.public_key_file or auth.jwks_url",
        "security.ip_blacklist: not a valid IP address or CIDR: 'not-an-ip'",
        "rate_limit.burst: must be a positive integer, got -3",
        "backend.type: must be one of 'memory' or 'redis', got 'mongo'",
    ]


def test_valid_alternatives(tmp_path: Path) -> None:
    config = load(tmp_path, """\
        auth: {algorithm: RS256, jwks_url: "https://login.example.com/jwks.json"}
        logging: {level: WARNING, format: JSON}
        rooms: {namespaces: {support: {history_size: 0, allowed_roles: [agent]}, open: null}}
        server: {port: "8080"}
        """).config
    assert config.auth.jwks_url and config.logging.level == "warning" and config.logging.format == "json"
    assert config.rooms.options("support:1").allowed_roles == ("agent",)
    assert config.rooms.options("open:1").history_size == config.rooms.history_size
    assert config.server.port == 8080


# --- unknown keys ---------------------------------------------------------------------------
def test_unknown_keys_are_warnings_with_their_full_path(tmp_path: Path) -> None:
    loaded = load(tmp_path, """\
        server: {prot: 9000}
        rate_limits: {burst: 5}
        rate_limit:
          per_type:
            typing: {messages_per_minute: 60, burst: 10, bursts: 3}
        rooms:
          namespaces:
            support: {colour: red}
        messages:
          filter: {wrods: [heck]}
        plugins:
          chat: {anything: 1}
        """)
    assert loaded.warnings == [
        "server.prot: unknown key (did you mean 'port'?)",
        "rate_limits: unknown section (did you mean 'rate_limit'?)",
        "rate_limit.per_type.typing.bursts: unknown key (did you mean 'burst'?)",
        "rooms.namespaces.support.colour: unknown key",
        "messages.filter.wrods: unknown key (did you mean 'words'?)",
    ]  # plugins.chat is the chat plugin's business (its own model checks it)
    assert loaded.config.server.port == 8000


def test_unknown_keys_are_reported_next_to_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "rate_limit: {burst: -3, messages_per_minit: 10}\n")
    assert info.value.errors == ["rate_limit.burst: must be a positive integer, got -3"]
    assert info.value.warnings == ["rate_limit.messages_per_minit: unknown key (did you mean 'messages_per_minute'?)"]


def test_likely_mistakes_are_warnings(tmp_path: Path) -> None:
    loaded = load(tmp_path, """\
        auth: {secret: short}
        security: {check_origin: true, ip_whitelist_enabled: true}
        """)
    assert loaded.warnings == [
        "auth.secret: 5 bytes is too short for HS256; use at least 32 random bytes (RFC 7518, section 3.2)",
        "security.ip_whitelist: empty while ip_whitelist_enabled is true, so every connection is refused",
        "security.allowed_origins: empty while check_origin is true, so every connection is refused",
    ]
    loaded = load(tmp_path, """\
        auth: {algorithm: RS256, jwks_url: "http://login/jwks", public_key_file: key.pem}
        """)
    assert loaded.warnings == [
        "auth.jwks_url: plain http lets anyone on the way swap the signing keys; use https",
        "auth.public_key_file: ignored, because auth.jwks_url is set",
    ]


def test_plugin_config_errors_use_the_same_wording() -> None:
    class Poll(PluginConfig):
        max_options: int = 10

    with pytest.raises(ValidationError) as info:
        Poll.model_validate({"max_options": "many", "max_optoins": 3})
    assert validation_messages(info.value, ("plugins", "poll")) == [
        "plugins.poll.max_options: must be an integer, got 'many'",
        "plugins.poll.max_optoins: unknown key",
    ]


# --- the environment ------------------------------------------------------------------------
def test_env_overrides_the_file(tmp_path: Path) -> None:
    loaded = load(tmp_path, "rate_limit: {messages_per_minute: 60}\n",
                  env={"WS_RATE_LIMIT_MESSAGES_PER_MINUTE": "600", "JWT_SECRET": LONG_SECRET,
                       "REDIS_URL": "rediss://redis.internal:6380/2", "HOME": "/root"})
    config = loaded.config
    assert config.rate_limit.messages_per_minute == 600
    assert config.auth.secret == LONG_SECRET
    assert config.backend.redis.url == "rediss://redis.internal:6380/2"
    assert loaded.env == ["JWT_SECRET", "REDIS_URL", "WS_RATE_LIMIT_MESSAGES_PER_MINUTE"]
    assert loaded.warnings == []


def test_command_line_overrides_beat_the_environment() -> None:
    loaded = load_config(None, env={"WS_SERVER_PORT": "9000", "WS_SERVER_HOST": "0.0.0.0"},
                         overrides={"server": {"port": 0}})
    assert (loaded.config.server.host, loaded.config.server.port) == ("0.0.0.0", 0)


def test_a_ws_variable_beats_its_shorthand() -> None:
    config = load_config(None, env={"JWT_SECRET": "a" * 40, "WS_AUTH_SECRET": "b" * 40}).config
    assert config.auth.secret == "b" * 40


@pytest.mark.parametrize("value, expected", [
    ("https://a.example, https://b.example", ["https://a.example", "https://b.example"]),
    ('["https://a.example"]', ["https://a.example"]),
    ("", []),
])
def test_env_lists_are_comma_separated_or_yaml(value: str, expected: list[str]) -> None:
    config = load_config(None, env={"WS_SECURITY_ALLOWED_ORIGINS": value}).config
    assert config.security.allowed_origins == expected


def test_env_reaches_nested_options_and_mappings(tmp_path: Path) -> None:
    config = load(tmp_path, "rate_limit:\n  per_type:\n    join: {messages_per_minute: 30, burst: 5}\n", env={
        "WS_BACKEND_REDIS_PREFIX": "chat-eu",
        "WS_MESSAGES_FILTER_ENABLED": "true",
        "WS_MESSAGES_FILTER_WORDS": "heck,darn",
        "WS_RATE_LIMIT_PER_TYPE": "{typing: {messages_per_minute: 300, burst: 30}}",
        "WS_PERMISSIONS_TYPES": '{"poll.create": [admin]}',
        "WS_PLUGINS_CHAT_HISTORY_LIMIT": "50",
    }).config
    assert config.backend.redis.prefix == "chat-eu"
    assert config.messages.filter.enabled and config.messages.filter.words == ["heck", "darn"]
    assert set(config.rate_limit.per_type) == {"join", "typing"}  # merged into the file's
    assert config.rate_limit.per_type["typing"].burst == 30
    assert config.permissions.types == {"poll.create": ["admin"]}
    assert config.plugin_section("chat") == {"history_limit": 50}


def test_env_strings_are_taken_verbatim() -> None:
    config = load_config(None, env={"WS_SERVER_NODE_ID": "007", "WS_AUTH_ISSUER": "yes",
                                    "WS_AUTH_AUDIENCE": ""}).config
    assert (config.server.node_id, config.auth.issuer, config.auth.audience) == ("007", "yes", None)


def test_a_bad_env_value_names_the_key_path_and_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"WS_RATE_LIMIT_BURST": "-3", "WS_SERVER_PONG_WAIT": "5",
                               "WS_SERVER_COMPRESSION": "sometimes", "JWT_SECRET": ""})
    assert info.value.errors == [
        "server.compression: must be true or false, got 'sometimes' (from WS_SERVER_COMPRESSION)",
        "rate_limit.burst: must be a positive integer, got -3 (from WS_RATE_LIMIT_BURST)",
    ]
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"WS_SERVER_PONG_WAIT": "5"})
    assert info.value.errors == [
        "server.pong_wait: must be greater than server.ping_period (25), got 5 (from WS_SERVER_PONG_WAIT)"]


def test_ws_variables_that_match_nothing_are_warnings() -> None:
    loaded = load_config(None, env={"WS_RATE_LIMIT_MESSAGE_PER_MINUTE": "600", "WS_SERVER": "x",
                                    "WS_NOPE_AT_ALL": "1", "WS_PLUGINS_INBOX_SIZE": "3"})
    assert loaded.warnings == [
        "WS_NOPE_AT_ALL: environment variable matches no setting (the form is WS_<SECTION>_<KEY>)",
        # inbox is not a plugin
        "WS_PLUGINS_INBOX_SIZE: environment variable matches no setting (the form is WS_<SECTION>_<KEY>)",
        "WS_RATE_LIMIT_MESSAGE_PER_MINUTE: environment variable matches no setting "
        "(did you mean WS_RATE_LIMIT_MESSAGES_PER_MINUTE?)",
        "WS_SERVER: environment variable matches no setting (the form is WS_<SECTION>_<KEY>)",
    ]
    assert loaded.config == Config()


def test_env_under_a_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    env = {"WS_SERVER_PORT": "9000", "REDIS_URL": "redis://r"}
    assert errors(tmp_path, "server: 5\nbackend: {redis: oops}\n", env) == [
        "server: must be a mapping, got 5", "backend.redis: must be a mapping, got 'oops'"]


# --- plugin sections (load_config(plugin_sections=...)) -------------------------------------
class PollOptions(PluginConfig):
    """A third-party plugin's model: PluginConfig forbids unknown keys."""
    max_options: PositiveInt = 10
    choices: list[str] = []
    closes_after: float | None = None
    anonymous: bool = False


class ReceiptOptions(BaseModel):
    """A built-in plugin that keeps a top-level key, with a model that lets unknown keys pass."""
    enabled: bool = True
    delay: float = 1.0
    rooms: list[str] = []


#: plugin name -> its section and model, as the registry would answer for the enabled ones;
#: presence is claimed with the core's own model, as while a built-in moves out of the core
SECTIONS: dict[str, tuple[tuple[str, ...], type[BaseModel] | None]] = {
    "poll": (("plugins", "poll"), PollOptions),
    "chat": (("plugins", "chat"), None),
    "receipts": (("receipts",), ReceiptOptions),
    "presence": (("presence",), PresenceConfig),
}
ALL = ["chat", "poll", "receipts", "presence"]


def sections(enabled: list[str]) -> dict[tuple[str, ...], type[BaseModel] | None]:
    return dict(SECTIONS[name] for name in enabled if name in SECTIONS)


def load_plugins(tmp_path: Path, text: str, env: dict[str, str] | None = None,
                 enabled: list[str] = ALL) -> LoadedConfig:
    path = tmp_path / "websocket.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_config(path, env=env or {}, overrides={"plugins": {"enabled": enabled}},
                       plugin_sections=sections)


def plugin_errors(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_plugins(tmp_path, text, env)
    return info.value


def test_the_hook_gets_plugins_enabled_after_every_layer(tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def record(enabled: list[str]) -> dict[tuple[str, ...], type[BaseModel] | None]:
        seen.append(enabled)
        return sections(enabled)

    path = tmp_path / "websocket.yaml"
    path.write_text("plugins: {enabled: [chat, poll]}\n", encoding="utf-8")
    load_config(None, env={}, plugin_sections=record)
    load_config(path, env={}, plugin_sections=record)
    load_config(path, env={"WS_PLUGINS_ENABLED": "chat, receipts"}, plugin_sections=record)
    load_config(path, env={"WS_PLUGINS_ENABLED": "chat"}, overrides={"plugins": {"enabled": ["poll"]}},
                plugin_sections=record)
    assert seen == [["chat", "typing", "presence", "notification"], ["chat", "poll"],
                    ["chat", "receipts"], ["poll"]]
    path.write_text("plugins: {enabled: chat}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={}, plugin_sections=record)
    assert info.value.errors == ["plugins.enabled: must be a list, got 'chat'"]
    assert len(seen) == 4  # not asked about a list that is not one


def test_validated_plugin_sections_are_kept_in_the_config(tmp_path: Path) -> None:
    config = load_plugins(tmp_path, """\
        plugins:
          poll: {max_options: 5, choices: [red, blue]}
          chat:
        receipts: {delay: 0.5}
        """).config
    poll = config.plugin_config(("plugins", "poll"))
    assert poll == PollOptions(max_options=5, choices=["red", "blue"])
    with pytest.raises(ValidationError):
        poll.max_options = 6  # type: ignore[union-attr]  # frozen
    assert config.plugin_config(("plugins", "chat")) == {}  # no model: the mapping as written
    assert config.plugin_config(("receipts",)) == ReceiptOptions(delay=0.5)
    assert config.plugin_config(("presence",)) == PresenceConfig()
    assert config.plugin_paths == (("plugins", "chat"), ("plugins", "poll"), ("receipts",), ("presence",))
    with pytest.raises(KeyError, match="plugins.typing: no plugin section loaded there"):
        config.plugin_config(("plugins", "typing"))
    # without the hook the loader is what it always was: nothing claimed, nothing kept
    plain = load_config(None, env={}).config
    assert plain.plugin_paths == () and plain == Config()
    with pytest.raises(KeyError):
        plain.plugin_config(("plugins", "poll"))


def test_plugin_section_errors_name_their_key_path(tmp_path: Path) -> None:
    error = plugin_errors(tmp_path, """\
        server: {port: -1}
        plugins:
          poll: {max_options: 0, choices: many, anonymous: perhaps}
        receipts: {delay: soon}
        """)
    assert error.errors == [
        "server.port: must be zero or more, got -1",
        "plugins.poll.max_options: must be a positive integer, got 0",
        "plugins.poll.choices: must be a list, got 'many'",
        "plugins.poll.anonymous: must be true or false, got 'perhaps'",
        "receipts.delay: must be a number, got 'soon'",
    ]
    error = plugin_errors(tmp_path, "plugins: {poll: 5}\nreceipts: [1]\n")
    assert error.errors == ["plugins.poll: must be a mapping (the plugin's options), got 5",
                            "receipts: must be a mapping (the plugin's options), got [1]"]


def test_unknown_plugin_keys_are_warnings_with_a_did_you_mean(tmp_path: Path) -> None:
    text = """\
        plugins:
          chat: {bogus: 1}
        receipts: {delya: 2, rooms: [general]}
        presence: {grace_perid: 3}
        """
    loaded = load_plugins(tmp_path, text)
    assert loaded.warnings == [
        "plugins.chat.bogus: unknown key",
        "receipts.delya: unknown key (did you mean 'delay'?)",
        "presence.grace_perid: unknown key (did you mean 'grace_period'?)",
    ]  # and receipts, claimed by a plugin, is not an unknown section
    assert loaded.config.plugin_config(("receipts",)) == ReceiptOptions(rooms=["general"])
    # the same file without the hook: the plugins' sections are unknown, plugins.chat is not
    # looked into
    assert load(tmp_path, text).warnings == ["receipts: unknown section", "presence: unknown section"]


def test_a_model_that_forbids_unknown_keys_makes_them_errors_with_a_did_you_mean(tmp_path: Path) -> None:
    error = plugin_errors(tmp_path, "plugins:\n  poll: {max_optons: 5, colour: red}\n")
    assert error.errors == ["plugins.poll.max_optons: unknown key (did you mean 'max_options'?)",
                            "plugins.poll.colour: unknown key"]
    assert error.warnings == []  # an error, not also a warning


def test_a_section_checked_by_the_core_and_a_plugin_reports_each_problem_once(tmp_path: Path) -> None:
    error = plugin_errors(tmp_path, "presence: {grace_period: -1, grace_perid: 2}\n")
    assert error.errors == ["presence.grace_period: must be zero or more, got -1"]
    assert error.warnings == ["presence.grace_perid: unknown key (did you mean 'grace_period'?)"]


def test_plugin_variables_are_read_with_the_models_types(tmp_path: Path) -> None:
    env = {"WS_PLUGINS_POLL_CHOICES": "yes, no ,maybe", "WS_PLUGINS_POLL_MAX_OPTIONS": "5",
           "WS_PLUGINS_POLL_ANONYMOUS": "true", "WS_PLUGINS_POLL_CLOSES_AFTER": "2.5",
           "WS_RECEIPTS_ROOMS": "[general, support]", "WS_RECEIPTS_DELAY": "0.25",
           "WS_PRESENCE_GRACE_PERIOD": "9"}
    loaded = load_plugins(tmp_path, "plugins:\n  poll: {max_options: 3}\n", env)
    config = loaded.config
    assert config.plugin_config(("plugins", "poll")) == PollOptions(
        max_options=5, choices=["yes", "no", "maybe"], anonymous=True, closes_after=2.5)
    assert config.plugin_config(("receipts",)) == ReceiptOptions(rooms=["general", "support"], delay=0.25)
    assert config.plugin_config(("presence",)) == PresenceConfig(grace_period=9)
    assert loaded.env == sorted(env) and loaded.warnings == []
    # an empty list variable is the empty list, an empty optional number is YAML's null
    config = load_plugins(tmp_path, "plugins:\n  poll: {choices: [a], closes_after: 3}\n",
                          {"WS_PLUGINS_POLL_CHOICES": "", "WS_PLUGINS_POLL_CLOSES_AFTER": ""}).config
    assert config.plugin_config(("plugins", "poll")) == PollOptions()


def test_a_bad_plugin_variable_names_the_variable(tmp_path: Path) -> None:
    error = plugin_errors(tmp_path, "", {"WS_PLUGINS_POLL_MAX_OPTIONS": "0", "WS_RECEIPTS_DELAY": "soon",
                                         "WS_PLUGINS_POLL_CHOICES": "[a, [b]]"})
    assert error.errors == [
        "plugins.poll.max_options: must be a positive integer, got 0 (from WS_PLUGINS_POLL_MAX_OPTIONS)",
        "plugins.poll.choices[1]: must be a string, got ['b'] (from WS_PLUGINS_POLL_CHOICES)",
        "receipts.delay: must be a number, got 'soon' (from WS_RECEIPTS_DELAY)",
    ]


def test_plugin_variables_that_match_no_key_are_warnings(tmp_path: Path) -> None:
    loaded = load_plugins(tmp_path, "", {"WS_PLUGINS_POLL_MAX_OPTIONZ": "3", "WS_PLUGINS_CHAT_HISTORY": "5",
                                         "WS_RECEIPTS_NOPE": "1", "WS_PLUGINS_ECHO_PREFIX": "2"})
    assert loaded.warnings == [
        "WS_PLUGINS_CHAT_HISTORY: environment variable matches no setting (plugins.chat takes no options)",
        # no enabled plugin claims plugins.echo
        "WS_PLUGINS_ECHO_PREFIX: environment variable matches no setting (the form is WS_<SECTION>_<KEY>)",
        "WS_PLUGINS_POLL_MAX_OPTIONZ: environment variable matches no setting "
        "(did you mean WS_PLUGINS_POLL_MAX_OPTIONS?)",
        "WS_RECEIPTS_NOPE: environment variable matches no setting (receipts has no key 'nope')",
    ]
    assert loaded.env == []
    assert loaded.config.plugin_config(("plugins", "poll")) == PollOptions()


def test_overrides_beat_plugin_variables(tmp_path: Path) -> None:
    loaded = load_config(None, env={"WS_PLUGINS_POLL_MAX_OPTIONS": "5", "WS_PLUGINS_POLL_CHOICES": "a,b"},
                         overrides={"plugins": {"enabled": ["poll"], "poll": {"max_options": 7}}},
                         plugin_sections=sections)
    assert loaded.config.plugin_config(("plugins", "poll")) == PollOptions(max_options=7, choices=["a", "b"])
    assert loaded.env == ["WS_PLUGINS_POLL_CHOICES"]


def test_a_hook_that_cannot_tell_is_reported_with_the_other_errors(tmp_path: Path) -> None:
    def broken(enabled: list[str]) -> dict[tuple[str, ...], type[BaseModel] | None]:
        raise PluginError("plugins.enabled: unknown plugin 'nosuch' (installed: chat)")

    path = tmp_path / "websocket.yaml"
    path.write_text("rate_limit: {burst: -3}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={}, plugin_sections=broken)
    assert info.value.errors == ["plugins.enabled: unknown plugin 'nosuch' (installed: chat)",
                                 "rate_limit.burst: must be a positive integer, got -3"]
