"""Environment overrides: ``JWT_SECRET``, ``REDIS_URL``, ``WS_<SECTION>_<KEY>`` for the core's
options and ``WS_PLUGINS_<NAME>_<KEY>`` (or ``WS_<SECTION>_<KEY>`` for a plugin section at the
top level) for a plugin's. Each value is read as its option's type wants it."""

from __future__ import annotations

import collections.abc
import difflib
from typing import Any, Mapping, get_origin

import yaml
from pydantic import BaseModel

from .base import KeyPath, is_model, keys_of, optional_of
from .messages import key_path
from .schema import Config, PluginsConfig

ENV_PREFIX = "WS_"
#: shorthand variables and the key each sets; a WS_ variable for the same key wins over them
ENV_SHORTHANDS: dict[str, tuple[str, ...]] = {"JWT_SECRET": ("auth", "secret"),
                                              "REDIS_URL": ("backend", "redis", "url")}
#: what the loader learnt from ``plugin_sections``: each enabled plugin's key path and model
Claimed = Mapping[KeyPath, type[BaseModel] | None]
_LISTS = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Set)


def _spelt(key: str) -> str:
    """A key as it reads in a variable name, lowercased: ``max-options`` -> ``max_options``."""
    return key.lower().replace("-", "_")


def _resolve(model: Any, rest: str) -> tuple[KeyPath, Any] | None:
    """The key path and type of the option spelt ``rest`` (lowercase, after ``WS_``) under
    ``model``: ``rate_limit_messages_per_minute`` -> ``('rate_limit', 'messages_per_minute')``,
    ``backend_redis_url`` -> ``('backend', 'redis', 'url')``. Only options, not whole sections."""
    fields = {_spelt(key): (key, info) for key, info in keys_of(model).items()}
    if rest in fields and not is_model(optional_of(fields[rest][1].annotation)):
        return (fields[rest][0],), fields[rest][1].annotation
    for spelt in sorted(fields, key=len, reverse=True):
        key, kind = fields[spelt][0], optional_of(fields[spelt][1].annotation)
        if rest.startswith(spelt + "_") and is_model(kind):
            found = _resolve(kind, rest[len(spelt) + 1:])
            if found is not None:
                return (key, *found[0]), found[1]
    return None


def _env_names(model: Any, prefix: str) -> list[str]:
    """Every variable name ``model`` accepts under ``prefix`` (for "did you mean")."""
    names: list[str] = []
    for key, info in keys_of(model).items():
        spelt = f"{prefix}_{_spelt(key).upper()}"
        kind = optional_of(info.annotation)
        names += _env_names(kind, spelt) if is_model(kind) else [spelt]
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
    kind = optional_of(annotation)
    if kind is str:
        return None if text == "" and kind is not annotation else text
    if (kind in _LISTS or get_origin(kind) in _LISTS) and not text.lstrip().startswith("["):
        return [item.strip() for item in text.split(",") if item.strip()]
    return _yaml_value(text)


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
        deep_merge(target[path[-1]], value)
    else:
        target[path[-1]] = value
    return True


def deep_merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = value


def _no_setting(name: str, hint: str) -> str:
    return f"{name}: environment variable matches no setting{hint}"


def core_env(raw: dict[str, Any], env: Mapping[str, str]) -> tuple[dict[KeyPath, str], list[str]]:
    """Apply ``JWT_SECRET`` and ``REDIS_URL``, then every ``WS_`` variable naming a core
    option, onto ``raw`` in place. Returns the key path each variable set and the ``WS_``
    variables that name no core option (perhaps a plugin's: :func:`plugin_env`)."""
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
    return sources, unmatched


def plugin_env(raw: dict[str, Any], env: Mapping[str, str], unmatched: list[str],
               claimed: Claimed | None) -> tuple[dict[KeyPath, str], list[str]]:
    """Apply the ``unmatched`` variables that name a plugin's option onto ``raw``; a warning
    for each of the others. With ``claimed`` (the plugin sections and their models) a value is
    read with its field's type; without, ``WS_PLUGINS_<NAME>_<KEY>`` is read as YAML for the
    plugins enabled or with a section in ``raw``."""
    if claimed is None:
        return _plugin_env_untyped(raw, env, unmatched)
    sections = sorted(((_spelt("_".join(path)), path, model) for path, model in claimed.items()),
                      key=lambda item: len(item[0]), reverse=True)
    known = _env_names(Config, "WS")
    for spelt, _, model in sections:
        known += _env_names(model, f"WS_{spelt.upper()}") if model is not None else []
    sources: dict[KeyPath, str] = {}
    warnings: list[str] = []
    for name in unmatched:
        rest = name[len(ENV_PREFIX):].lower()
        mine = [(path, model, rest[len(spelt) + 1:]) for spelt, path, model in sections
                if rest.startswith(spelt + "_") and len(rest) > len(spelt) + 1]
        found = None
        for path, model, key in mine:
            option = _resolve(model, key) if model is not None else None
            if option is not None:
                found = path + option[0], option[1]
                break
        if found is not None:
            if _put(raw, found[0], _env_value(env[name], found[1])):
                sources[found[0]] = name
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if close:
            hint = f" (did you mean {close[0]}?)"
        elif mine:
            path, model, key = mine[0]
            hint = f" ({key_path(path)} takes no options)" if model is None else \
                f" ({key_path(path)} has no key {key!r})"
        else:
            hint = " (the form is WS_<SECTION>_<KEY>)"
        warnings.append(_no_setting(name, hint))
    return sources, warnings


def _plugin_names(raw: dict[str, Any]) -> dict[str, str]:
    """Plugins that may take ``WS_PLUGINS_<NAME>_<KEY>``: the enabled ones and those with a
    section, by their spelling in a variable name."""
    section = raw.get("plugins")
    section = section if isinstance(section, dict) else {}
    enabled = section.get("enabled", PluginsConfig.model_fields["enabled"].default)
    names = [n for n in section if n != "enabled"]
    names += [n for n in enabled if isinstance(n, str) and ":" not in n] if isinstance(enabled, list) else []
    return {str(n).lower().replace("-", "_"): str(n) for n in names}


def _plugin_env_untyped(raw: dict[str, Any], env: Mapping[str, str],
                        unmatched: list[str]) -> tuple[dict[KeyPath, str], list[str]]:
    sources: dict[KeyPath, str] = {}
    warnings: list[str] = []
    plugins = _plugin_names(raw)
    for name in unmatched:
        rest = name[len(ENV_PREFIX):].lower()
        rest = rest[len("plugins_"):] if rest.startswith("plugins_") else None
        spelt = next((s for s in sorted(plugins, key=len, reverse=True)
                      if rest and rest.startswith(s + "_") and len(rest) > len(s) + 1), None)
        if rest is None or spelt is None:
            close = difflib.get_close_matches(name, _env_names(Config, "WS"), n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else " (the form is WS_<SECTION>_<KEY>)"
            warnings.append(_no_setting(name, hint))
            continue
        path = ("plugins", plugins[spelt], rest[len(spelt) + 1:])
        if _put(raw, path, _yaml_value(env[name])):
            sources[path] = name
    return sources, warnings


def apply_env(raw: dict[str, Any], env: Mapping[str, str],
              claimed: Claimed | None = None) -> tuple[dict[KeyPath, str], list[str]]:
    """Apply ``JWT_SECRET`` and ``REDIS_URL``, then ``WS_<SECTION>_<KEY>`` and the plugins'
    variables onto ``raw`` in place. Returns the key path each variable set and a warning for
    each ``WS_`` variable that matches no option."""
    sources, unmatched = core_env(raw, env)
    more, warnings = plugin_env(raw, env, unmatched, claimed)
    return {**sources, **more}, warnings
