"""How a problem reads: key paths (``rate_limit.burst``, ``rooms.allowed_roles[1]``), pydantic's
errors reworded for an operator, unknown keys with a "did you mean". Shared by the core's
sections and the plugins' alike."""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Mapping, get_args, get_origin

from pydantic import BaseModel, ValidationError

from .base import FieldError, KeyPath, describe, is_model, keys_of, optional_of


def key_path(loc: Iterable[Any]) -> str:
    """``('rate_limit', 'burst')`` -> ``rate_limit.burst``; list positions as ``[0]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) and text else f".{part}" if text else str(part)
    return text or "(top level)"


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.7) -> str:
    """`` (did you mean 'port'?)`` for the nearest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def field_type(root: Any, loc: tuple[Any, ...]) -> Any:
    """The type declared at ``loc`` under the model ``root``; None when it cannot tell."""
    kind = root
    for part in loc:
        kind = optional_of(kind)
        if is_model(kind):
            info = keys_of(kind).get(str(part))
            if info is None:
                return None
            kind = info.annotation
        elif get_origin(kind) in (dict, list):
            kind = get_args(kind)[-1]
        else:
            return None
    return optional_of(kind)


_MUST_BE = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
    "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def format_error(err: Mapping[str, Any], kind: Any = None) -> str:
    """One pydantic error as the rest of a ``key.path: ...`` line; ``kind`` is the field's
    declared type when known (it picks "integer" or "number")."""
    code, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    got = f", got {describe(value)}"
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


def message(err: Mapping[str, Any], prefix: KeyPath, root: Any, sources: Mapping[KeyPath, str]) -> str:
    """One error of validating ``root`` (a model, or None when unknown) as ``key.path: problem``,
    the path under ``prefix``; ``(from WS_...)`` when ``sources`` says a variable set the value.
    An unknown key of a model that forbids them gets the nearest known key as a hint."""
    loc = tuple(err["loc"])
    blamed = (err.get("ctx") or {}).get("error")
    if isinstance(blamed, FieldError):
        loc += (blamed.key,)
    text = f"{key_path(prefix + loc)}: {format_error(err, field_type(root, loc))}"
    if err["type"] == "extra_forbidden" and root is not None and loc:
        parent = field_type(root, loc[:-1])
        text += did_you_mean(str(loc[-1]), keys_of(parent)) if is_model(parent) else ""
    full = prefix + loc
    var = next((name for path, name in sources.items() if full[:len(path)] == path), None)
    return f"{text} (from {var})" if var else text


def validation_messages(exc: ValidationError, prefix: tuple[Any, ...] = (),
                        model: type[BaseModel] | None = None) -> list[str]:
    """Each error of ``exc`` as ``key.path: problem``, the path under ``prefix``; given the
    ``model`` that raised it, an unknown key gets a "did you mean"."""
    return [message(e, prefix, model, {}) for e in exc.errors()]


def unknown_keys(raw: Any, model: Any, path: KeyPath = (), *, skip: Iterable[KeyPath] = (),
                 free: tuple[type[BaseModel], ...] = ()) -> list[str]:
    """Keys of ``raw`` that ``model`` does not declare, as warnings with the nearest known key
    as a hint (``unknown section`` at the top level). Not reported: the keys at a path in
    ``skip`` (plugin sections, checked with the plugin's model), those of a model in ``free``,
    and those of a model that forbids them (its validation makes them errors)."""
    if not isinstance(raw, dict):
        return []
    skip = skip if isinstance(skip, (set, frozenset)) else frozenset(skip)
    fields = keys_of(model)
    report = model not in free and model.model_config.get("extra") != "forbid"
    found: list[str] = []
    for key, value in raw.items():
        where = path + (str(key),)
        if where in skip:
            continue
        info = fields.get(key) if isinstance(key, str) else None
        if info is None:
            if report:
                what = "unknown section" if not path else "unknown key"
                found.append(f"{key_path(where)}: {what}{did_you_mean(str(key), fields)}")
            continue
        kind = optional_of(info.annotation)
        if is_model(kind):
            found += unknown_keys(value, kind, where, skip=skip, free=free)
        elif get_origin(kind) is dict and is_model(get_args(kind)[1]) and isinstance(value, dict):
            for name, item in value.items():
                found += unknown_keys(item, get_args(kind)[1], where + (str(name),), skip=skip, free=free)
    return found
