"""Plugin discovery, validation and the type -> handler map; frozen once the server starts.

Plugins are found through the ``switchboard.plugins`` entry-point group (the built-in ones
register there too) or, for development, by a ``module:Class`` import path in
``plugins.enabled``. Every problem fails startup with a message naming the plugin and type.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Awaitable, Callable

from pydantic import BaseModel, ValidationError

from .config import Config, validation_messages
from .errors import ConfigError, MessageRejected, PluginError
from .plugin_api import HANDLER_ATTR, Context, HandlesSpec, Plugin, Stage
from .protocol import ErrorCode

ENTRY_POINT_GROUP = "switchboard.plugins"
CORE_TYPES = {"ping": "client keep-alive; answered with pong",
              "auth": "first-frame authentication; answered with connected",
              "refresh": "a new token for the same sub; answered with refreshed"}


@dataclass(frozen=True)
class Handler:
    type: str
    plugin: Plugin
    func: Callable[[Context, Any], Awaitable[None]]
    schema: type[BaseModel] | None
    description: str

    def validate(self, data: dict[str, Any]) -> Any:
        if self.schema is None:
            return data
        try:
            return self.schema.model_validate(data)
        except ValidationError as exc:
            detail = "; ".join(validation_messages(exc, ("data",)))
            raise MessageRejected(ErrorCode.INVALID_MESSAGE, detail) from None

    def json_schema(self) -> dict[str, Any]:
        if self.schema is None:
            return {"type": "object"}
        return self.schema.model_json_schema()


def available_plugins() -> dict[str, Any]:
    """Entry points of the ``switchboard.plugins`` group, by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _load_class(name: str, eps: dict[str, Any]) -> type[Plugin]:
    if name in eps:
        try:
            obj = eps[name].load()
        except Exception as exc:
            raise PluginError(f"plugin {name!r}: cannot load entry point {eps[name].value}: {exc}") from exc
    elif ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise PluginError(f"plugin {name!r}: cannot import: {exc}") from exc
    else:
        known = ", ".join(sorted(eps)) or "none installed"
        raise PluginError(f"plugins.enabled: unknown plugin {name!r} (available: {known})")
    if not (isinstance(obj, type) and issubclass(obj, Plugin)):
        raise PluginError(f"plugin {name!r}: {obj!r} is not a subclass of server.plugin_api.Plugin")
    if not obj.name:
        raise PluginError(f"plugin {name!r}: class {obj.__name__} has no 'name'")
    return obj


def _check_handler(plugin: str, spec: HandlesSpec, func: Any) -> None:
    where = f"plugin {plugin!r}, type {spec.type!r} ({func.__qualname__})"
    if not inspect.iscoroutinefunction(func):
        raise PluginError(f"{where}: handler must be 'async def', got a plain function")
    params = list(inspect.signature(func).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required_extra = [p for p in params[3:] if p.default is p.empty
                      and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if len(positional) < 3 or required_extra:
        raise PluginError(f"{where}: handler signature must be (self, ctx, data), got {inspect.signature(func)}")
    if spec.schema is not None and not (isinstance(spec.schema, type) and issubclass(spec.schema, BaseModel)):
        raise PluginError(f"{where}: schema must be a pydantic BaseModel subclass, got {spec.schema!r}")


def plugin_config(cls: type[Plugin], config: Config) -> Any:
    section = config.plugin_section(cls.name)
    if cls.Config is None:
        return section
    try:
        return cls.Config.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(validation_messages(exc, ("plugins", cls.name))) from None


class Registry:
    def __init__(self, plugins: list[Plugin]) -> None:
        self.plugins = plugins
        self.handlers: dict[str, Handler] = {}
        self.stages: list[Stage] = []
        for plugin in plugins:
            for attr in dir(type(plugin)):
                raw = getattr(type(plugin), attr, None)
                specs: tuple[HandlesSpec, ...] = getattr(raw, HANDLER_ATTR, ())
                for spec in specs:
                    _check_handler(plugin.name, spec, raw)
                    if spec.type in CORE_TYPES:
                        raise PluginError(f"plugin {plugin.name!r}: type {spec.type!r} is reserved by the core")
                    other = self.handlers.get(spec.type)
                    if other is not None:
                        raise PluginError(
                            f"type {spec.type!r} is claimed twice: by plugin {other.plugin.name!r} "
                            f"and by plugin {plugin.name!r}")
                    self.handlers[spec.type] = Handler(spec.type, plugin, getattr(plugin, attr),
                                                       spec.schema, spec.description)
            self.stages.extend(plugin.stages())

    @classmethod
    def classes(cls, config: Config) -> list[tuple[type[Plugin], Any]]:
        """Resolve and validate every enabled plugin class and its config section."""
        eps = available_plugins()
        out: list[tuple[type[Plugin], Any]] = []
        seen: set[str] = set()
        errors: list[str] = []
        for name in config.plugins.enabled:
            plugin_cls = _load_class(name, eps)
            if plugin_cls.name in seen:
                raise PluginError(f"plugins.enabled: plugin {plugin_cls.name!r} is listed twice")
            seen.add(plugin_cls.name)
            try:
                out.append((plugin_cls, plugin_config(plugin_cls, config)))
            except ConfigError as exc:
                errors += exc.errors
        if errors:
            raise ConfigError(errors)
        return out

    def describe(self) -> list[dict[str, Any]]:
        """Every registered type with its plugin, for ``GET /api/protocol``."""
        out = [{"type": t, "plugin": "core", "direction": "client_to_server", "description": d,
                "schema": {"type": "object"}} for t, d in CORE_TYPES.items()]
        for handler in sorted(self.handlers.values(), key=lambda h: h.type):
            out.append({"type": handler.type, "plugin": handler.plugin.name,
                        "direction": "client_to_server", "description": handler.description,
                        "schema": handler.json_schema()})
        return out
