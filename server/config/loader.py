"""Loading the config: the file (with the mistakes YAML lets pass), the environment, the
command-line overrides, then validation of the core's sections and of each enabled plugin's.

Every error names its key path (``rate_limit.burst: must be a positive integer, got -3``);
unknown keys are collected as warnings (fatal under ``check-config --strict``).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError, PluginError
from .base import KeyPath, describe, is_model
from .env import Claimed, core_env, deep_merge, plugin_env
from .messages import field_type, key_path, message, unknown_keys
from .schema import DEV_SECRET, Config, PluginsConfig

#: ``plugin_sections`` of :func:`load_config`: given ``plugins.enabled``, each enabled plugin's
#: section as a key path (``("plugins", "poll")``, or ``("presence",)`` for a built-in that
#: keeps its historical key) and the pydantic model that validates it (None: no options)
PluginSections = Callable[[list[str]], Mapping[KeyPath, type[BaseModel] | None]]

#: the shortest HMAC secret RFC 7518 (section 3.2) allows, in bytes
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


@dataclass
class LoadedConfig:
    config: Config
    path: Path | None
    warnings: list[str] = field(default_factory=list)
    #: the environment variables that set something (names only: values may be secrets)
    env: list[str] = field(default_factory=list)


# --- reading the file ------------------------------------------------------------------------

_TOP_LEVEL_NOUNS = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def read_file(path: Path) -> tuple[dict[str, Any], list[str]]:
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
                found.append(f"{key_path(path + (name,))}: given twice (lines {lines[name]} and "
                             f"{line}); keep one")
            lines.setdefault(name, line)
            found += _twice(value, path + (name,), seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found += _twice(item, path, seen)
    return found


# --- checks beyond the types -----------------------------------------------------------------

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
        elif auth.secret and len(auth.secret.encode()) < _HMAC_MIN_BYTES.get(auth.algorithm, 0):
            found.append((("auth", "secret"), f"{len(auth.secret.encode())} bytes is too short for "
                          f"{auth.algorithm}, refused when server.environment is production: use "
                          f"at least {_HMAC_MIN_BYTES[auth.algorithm]} random bytes (RFC 7518, "
                          "section 3.2)"))
    return [f"{key_path(path)}: {text}" + (f" (from {sources[path]})" if path in sources else "")
            for path, text in found]



# --- plugin sections -------------------------------------------------------------------------

def _enabled(raw: dict[str, Any], overrides: Mapping[str, Any] | None) -> list[str] | None:
    """``plugins.enabled`` as the file, the environment and the overrides give it (else the
    default); None when it is not a list of names (validation reports that)."""
    plugins: Any = raw.get("plugins")
    if overrides and "plugins" in overrides:
        over = overrides["plugins"]
        plugins = {**plugins, **over} if isinstance(plugins, dict) and isinstance(over, Mapping) else over
    default = PluginsConfig.model_fields["enabled"].default
    enabled = default if plugins is None else plugins.get("enabled", default) \
        if isinstance(plugins, Mapping) else None
    if isinstance(enabled, list) and all(isinstance(name, str) for name in enabled):
        return list(enabled)
    return None


def _claim(plugin_sections: PluginSections,
           enabled: list[str]) -> tuple[dict[KeyPath, Any] | None, list[str], list[str]]:
    """The sections the enabled plugins claim, and the errors and warnings of a resolver that
    could not tell (a ConfigError or PluginError it raised)."""
    try:
        answer = plugin_sections(enabled)
    except ConfigError as exc:
        return None, exc.errors, exc.warnings
    except PluginError as exc:
        return None, [str(exc)], []
    claimed: dict[KeyPath, Any] = {}
    for path, model in answer.items():
        key = tuple(path) if isinstance(path, (tuple, list)) else ()
        if not key or not all(isinstance(part, str) and part for part in key) \
                or not (model is None or is_model(model)):
            raise TypeError(f"plugin_sections returned {path!r}: {model!r}; each entry must be a "
                            "key path (a tuple of strings) -> a pydantic model class or None")
        claimed[key] = model
    return claimed, [], []


def _lookup(raw: dict[str, Any], path: KeyPath) -> tuple[bool, Any]:
    """(True, the value at ``path``, None when absent), or (False, None) when something on the
    way is not a mapping (the core's validation reports that)."""
    node: Any = raw
    for key in path:
        if node is None:
            return True, None
        if not isinstance(node, dict):
            return False, None
        node = node.get(key)
    return True, node


def _plugin_sections(raw: dict[str, Any], claimed: Claimed,
                     sources: Mapping[KeyPath, str]) -> tuple[dict[KeyPath, Any], list[str], list[str]]:
    """Each claimed section validated with its model: the values, the errors, the warnings."""
    values: dict[KeyPath, Any] = {}
    errors: list[str] = []
    warnings: list[str] = []
    for path, model in claimed.items():
        reachable, section = _lookup(raw, path)
        if not reachable:
            continue
        section = {} if section is None else section
        if not isinstance(section, dict):
            # the core checks plugins.<name> and its own sections already
            if path[0] != "plugins" and field_type(Config, path) is None:
                errors.append(f"{key_path(path)}: must be a mapping (the plugin's options), "
                              f"got {describe(section)}")
            continue
        if model is None:
            warnings += [f"{key_path(path + (str(key),))}: unknown key" for key in section]
            values[path] = copy.deepcopy(section)
            continue
        warnings += unknown_keys(section, model, path)
        try:
            values[path] = model.model_validate(section)
        except ValidationError as exc:
            errors += [message(e, path, model, sources) for e in exc.errors()]
    return values, errors, warnings


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


def _unique(lines: list[str]) -> list[str]:
    """``lines`` without repeats: a section both the core and a plugin check (while a
    built-in's section moves from one to the other) reports each problem once."""
    return list(dict.fromkeys(lines))


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    plugin_sections: PluginSections | None = None,
) -> LoadedConfig:
    """Load and validate the config. Later layers win: the built-in defaults, the file (when
    ``path`` is given), the environment (``env``, default ``os.environ``), then ``overrides``
    (a nested mapping: command-line flags, tests). Raises ``ConfigError`` listing every error,
    with the warnings found so far.

    With ``plugin_sections``, it is called with ``plugins.enabled`` (after the layers above)
    and answers each enabled plugin's section path and model; each section is then validated
    like a core section (errors with their key path and variable, unknown keys as warnings with
    a "did you mean", or errors for a model that forbids them), its ``WS_`` variables are read
    with the model's field types, and the results are kept: ``config.plugin_config(path)``.
    A ConfigError or PluginError it raises is reported as the config's error."""
    env = os.environ if env is None else env
    file_path = Path(path) if path is not None else None
    raw, errors = read_file(file_path) if file_path is not None else ({}, [])
    sources, unmatched = core_env(raw, env)
    claimed: dict[KeyPath, Any] | None = None
    warnings: list[str] = []
    if plugin_sections is not None:
        enabled = _enabled(raw, overrides)
        if enabled is not None:
            claimed, problems, notes = _claim(plugin_sections, enabled)
            errors, warnings = errors + problems, warnings + notes
    more, notes = plugin_env(raw, env, unmatched, claimed)
    sources.update(more)
    warnings += notes
    if overrides:
        deep_merge(raw, copy.deepcopy(dict(overrides)))
        sources = {p: name for p, name in sources.items() if not _overridden(overrides, p)}
    warnings += unknown_keys(raw, Config, skip=frozenset(claimed or ()), free=(PluginsConfig,))
    sections: dict[KeyPath, Any] = {}
    plugin_errors: list[str] = []
    if claimed:
        sections, plugin_errors, notes = _plugin_sections(raw, claimed, sources)
        warnings += notes
    tidy = _unique if plugin_sections is not None else list
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        errors += [message(e, (), Config, sources) for e in exc.errors()]
        raise ConfigError(tidy(errors + plugin_errors), tidy(warnings)) from None
    errors += _environment_errors(config, sources) + plugin_errors
    if errors:
        raise ConfigError(tidy(errors), tidy(warnings))
    if claimed is not None:
        config = config.with_plugin_configs(sections)
    return LoadedConfig(config, file_path, tidy(warnings) + _advice(config), sorted(set(sources.values())))
