"""Plugin discovery, validation and the type -> handler map; frozen once the server starts.

Plugins are found through the ``switchboard.plugins`` entry-point group (the built-in ones
register there too) or, for development, by a ``module:Class`` import path in
``plugins.enabled``. Everything that can be checked without running the server is checked in
:meth:`Registry.classes` (also used by ``check-config``); every problem fails startup with a
message naming the plugin and, where there is one, the type or hook.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import os
import re
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Awaitable, Callable, Iterable, Mapping

import structlog
from pydantic import BaseModel, ValidationError

from .config import Config, LoadedConfig, load_config, validation_messages
from .errors import ConfigError, MessageRejected, PluginError
from .plugin_api import HANDLER_ATTR, Context, HandlesSpec, NodeAPI, Plugin, Stage, clean_doc
from .protocol import ERROR_CODES, ErrorCode, close_catalogue
from .protocol.core_types import CORE_EMITS, CORE_TYPES


log = structlog.get_logger(__name__)

ENTRY_POINT_GROUP = "switchboard.plugins"
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_TYPE = re.compile(r"[A-Za-z0-9_.:-]+")
#: lifecycle hook -> the parameters it is called with after ``self``
HOOKS: dict[str, tuple[str, ...]] = {"on_startup": (), "on_connect": ("ctx",),
                                     "on_disconnect": ("ctx",), "on_room_created": ("room",),
                                     "on_room_deleted": ("room",), "on_history_expired": ("room",),
                                     "on_shutdown": (),
                                     "send_from_api": ("user_id", "type_", "data")}
_ERROR_CODE = re.compile(r"[A-Z][A-Z0-9_]*")


@dataclass(frozen=True)
class Handler:
    type: str
    plugin: Plugin
    func: Callable[[Context, Any], Awaitable[None]]
    schema: builtins.type[BaseModel] | None
    description: str

    def validate(self, data: dict[str, Any]) -> Any:
        if self.schema is None:
            return data
        try:
            # model_validate(data) without its wrapper's keyword handling, a third of its cost
            return self.schema.__pydantic_validator__.validate_python(data)
        except ValidationError as exc:
            detail = "; ".join(validation_messages(exc, ("data",)))
            raise MessageRejected(ErrorCode.INVALID_MESSAGE, detail) from None


def _json_schema(schema: type[BaseModel] | None) -> dict[str, Any]:
    return {"type": "object"} if schema is None else schema.model_json_schema()


# --- loading ----------------------------------------------------------------------------------
def available_plugins() -> dict[str, EntryPoint]:
    """Entry points of the ``switchboard.plugins`` group, by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_plugin_class(name: str, eps: dict[str, EntryPoint]) -> type[Plugin]:
    """The class of ``name``: an entry point of the group, or a ``module:Class`` path."""
    if name in eps:
        try:
            obj = eps[name].load()
        except Exception as exc:
            raise PluginError(f"plugin {name!r}: cannot load entry point {eps[name].value}: {exc}") from exc
    elif ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except Exception as exc:
            raise PluginError(f"plugin {name!r}: cannot import: {type(exc).__name__}: {exc}") from exc
    else:
        known = ", ".join(sorted(eps)) or "none installed"
        raise PluginError(f"plugins.enabled: unknown plugin {name!r} (installed: {known})")
    if not (isinstance(obj, type) and issubclass(obj, Plugin)):
        raise PluginError(f"plugin {name!r}: {obj!r} is not a subclass of server.plugin_api.Plugin")
    if not isinstance(obj.name, str) or not _NAME.fullmatch(obj.name) or obj.name == "core":
        raise PluginError(f"plugin {name!r}: class {obj.__name__} needs a 'name' of letters, digits, "
                          f"'_' or '-' other than 'core', got {obj.name!r}")
    if name in eps and obj.name != name:
        raise PluginError(f"plugin {name!r}: entry point {name!r} loads class {obj.__name__} named "
                          f"{obj.name!r}; the two names must be the same")
    return obj


def section_path(cls: type[Plugin[Any]]) -> tuple[str, ...]:
    """Where the plugin's section is: ``plugins.<name>``, or its own top-level key."""
    return (cls.section,) if cls.section else ("plugins", cls.name)


def plugin_sections(enabled: list[str]) -> dict[tuple[str, ...], type[BaseModel] | None]:
    """For ``load_config(plugin_sections=...)``: where each enabled plugin's section is and its
    model, so that the loader validates plugin sections like the core's (key paths, unknown
    keys with "did you mean", typed environment variables). A name that does not load is left
    to :meth:`Registry.classes`, which reports it."""
    installed = available_plugins()
    found: dict[tuple[str, ...], type[BaseModel] | None] = {}
    for name in enabled:
        try:
            plugin_cls = load_plugin_class(name, installed)
        except PluginError:
            continue
        found[section_path(plugin_cls)] = plugin_cls.Config
        if plugin_cls.section:  # its options are elsewhere: any key under plugins.<name> is unknown
            found.setdefault(("plugins", plugin_cls.name), None)
    return found


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None, *,
         overrides: Mapping[str, Any] | None = None) -> LoadedConfig:
    """``load_config`` with the enabled plugins' sections checked too: what ``serve``,
    ``check-config`` and a reload use."""
    return load_config(path, env, overrides=overrides, plugin_sections=plugin_sections)


def plugin_config(cls: type[Plugin[Any]], config: Config) -> Any:
    """The plugin's section, validated against its ``Config`` model (already validated when
    the config was loaded with :func:`load`)."""
    path = section_path(cls)
    if path in config.plugin_paths:
        return config.plugin_config(path)
    if cls.section:
        raw = getattr(config, cls.section, None)
        if raw is None:
            raw = (config.model_extra or {}).get(cls.section)
        section = raw.model_dump() if isinstance(raw, BaseModel) else dict(raw or {})
    else:
        section = config.plugin_section(cls.name)
    if cls.Config is None:
        return section
    try:
        return cls.Config.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(validation_messages(exc, path)) from None


# --- checking ---------------------------------------------------------------------------------
def _signature_error(func: Any, params: tuple[str, ...]) -> str | None:
    """None when ``func`` is an ``async def`` callable as ``func(self, *params)``."""
    if not inspect.iscoroutinefunction(func):
        return f"must be 'async def', got {getattr(func, '__qualname__', repr(func))}"
    signature = inspect.signature(func)
    try:
        signature.bind(*([None] * (len(params) + 1)))
    except TypeError:
        return f"{func.__qualname__}{signature} must take ({', '.join(('self', *params))})"
    return None


def _is_model(schema: Any) -> bool:
    return isinstance(schema, type) and issubclass(schema, BaseModel)


def _check_model(where: str, what: str, schema: Any) -> None:
    if schema is not None and not _is_model(schema):
        raise PluginError(f"{where}: {what} must be a pydantic BaseModel subclass or None, got {schema!r}")


def _schema_for(plugin: Plugin[Any], spec: HandlesSpec) -> type[BaseModel] | None:
    """A handler's model: as declared, or built now from the plugin's config."""
    if spec.schema is None or _is_model(spec.schema):
        return spec.schema  # type: ignore[return-value]
    where = f"plugin {plugin.name!r}, type {spec.type!r}"
    try:
        schema = spec.schema(plugin.config)  # type: ignore[call-arg]
    except Exception as exc:
        raise PluginError(f"{where}: building the schema from the config failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    _check_model(where, "the schema built from the config", schema)
    return schema


def _check_type(where: str, type_: Any) -> None:
    if not isinstance(type_, str) or not _TYPE.fullmatch(type_):
        raise PluginError(f"{where}: a type must be a non-empty string of letters, digits and "
                          f"'_.:-', got {type_!r}")


def _handlers_of(cls: type[Plugin]) -> list[tuple[str, HandlesSpec]]:
    """(attribute name, spec) of every handler the class declares, each checked."""
    found: list[tuple[str, HandlesSpec]] = []
    for attr in dir(cls):
        func = getattr(cls, attr, None)
        for spec in getattr(func, HANDLER_ATTR, ()):
            where = f"plugin {cls.name!r}, type {spec.type!r}"
            _check_type(f"plugin {cls.name!r}", spec.type)
            problem = _signature_error(func, ("ctx", "data"))
            if problem:
                raise PluginError(f"{where}: handler {problem}")
            if isinstance(spec.schema, type) or not callable(spec.schema):
                _check_model(where, "schema", spec.schema)  # else a function of the config
            found.append((attr, spec))
    return found


def _check_class(cls: type[Plugin]) -> list[tuple[str, HandlesSpec]]:
    for hook, params in HOOKS.items():
        func = getattr(cls, hook)
        if func is not getattr(Plugin, hook):
            problem = _signature_error(func, params)
            if problem:
                raise PluginError(f"plugin {cls.name!r}, hook {hook!r}: {problem}")
    if not isinstance(cls.emits, Mapping):
        raise PluginError(f"plugin {cls.name!r}: 'emits' must be a dict of type -> model, got {cls.emits!r}")
    for type_, schema in cls.emits.items():
        _check_type(f"plugin {cls.name!r}, emits", type_)
        _check_model(f"plugin {cls.name!r}, emitted type {type_!r}", "its model", schema)
    _check_model(f"plugin {cls.name!r}", "Config", cls.Config)
    if not isinstance(cls.errors, Mapping):
        raise PluginError(f"plugin {cls.name!r}: 'errors' must be a dict of code -> description, "
                          f"got {cls.errors!r}")
    for code, text in cls.errors.items():
        if not isinstance(code, str) or not _ERROR_CODE.fullmatch(code) or not isinstance(text, str):
            raise PluginError(f"plugin {cls.name!r}: error code {code!r} must be UPPER_SNAKE_CASE "
                              "with a description")
    return _handlers_of(cls)


def _noun(what: str) -> str:
    return what if what == "error code" else f"{what} type"


def _claim(owners: dict[str, str], reserved: Iterable[str], type_: str, plugin: str, what: str) -> None:
    if type_ in reserved:
        raise PluginError(f"plugin {plugin!r}: {_noun(what)} {type_!r} is reserved by the core")
    if type_ in owners:
        raise PluginError(f"{_noun(what)} {type_!r} is claimed twice: by plugin {owners[type_]!r} "
                          f"and by plugin {plugin!r}")
    owners[type_] = plugin


def check_classes(classes: list[type[Plugin]]) -> dict[str, list[tuple[str, HandlesSpec]]]:
    """Check every class and that no type is claimed twice; handlers by plugin name."""
    handles: dict[str, str] = {}
    emits: dict[str, str] = {}
    errors: dict[str, str] = {}
    out: dict[str, list[tuple[str, HandlesSpec]]] = {}
    for cls in classes:
        if cls.name in out:
            raise PluginError(f"plugins.enabled: plugin {cls.name!r} is listed twice")
        out[cls.name] = _check_class(cls)
        for _, spec in out[cls.name]:
            _claim(handles, CORE_TYPES, spec.type, cls.name, "client")
        for type_ in cls.emits:
            _claim(emits, CORE_EMITS, type_, cls.name, "server")
        for code in cls.errors:
            _claim(errors, ERROR_CODES, code, cls.name, "error code")
    return out


def _stages_of(plugin: Plugin) -> list[Stage]:
    try:
        stages = list(plugin.stages())
    except Exception as exc:
        raise PluginError(f"plugin {plugin.name!r}: stages() failed: {type(exc).__name__}: {exc}") from exc
    for stage in stages:
        if not callable(getattr(stage, "process", None)):
            raise PluginError(f"plugin {plugin.name!r}: stage {stage!r} has no process(conn, env) method")
    return stages


def _entry(type_: str, plugin: str, direction: str, schema: type[BaseModel] | None,
           description: str) -> dict[str, Any]:
    return {"type": type_, "plugin": plugin, "direction": direction, "description": description,
            "schema": _json_schema(schema)}


class Registry:
    """The enabled plugins in config order, their handlers by type and their stages."""

    def __init__(self, plugins: list[Plugin]) -> None:
        self.plugins = plugins
        self.handlers: dict[str, Handler] = {}
        #: server-to-client type -> the plugin that emits it
        self.emitters: dict[str, Plugin[Any]] = {}
        self.stages: list[Stage] = []
        declared = check_classes([type(p) for p in plugins])
        for plugin in plugins:
            for attr, spec in declared[plugin.name]:
                self.handlers[spec.type] = Handler(spec.type, plugin, getattr(plugin, attr),
                                                   _schema_for(plugin, spec), spec.description)
            self.stages.extend(_stages_of(plugin))
            self.emitters.update(dict.fromkeys(type(plugin).emits, plugin))

    @classmethod
    def classes(cls, config: Config) -> list[tuple[type[Plugin], Any]]:
        """Resolve and check every enabled plugin class and validate its config section."""
        eps = available_plugins()
        classes = [load_plugin_class(name, eps) for name in config.plugins.enabled]
        check_classes(classes)
        out: list[tuple[type[Plugin], Any]] = []
        errors: list[str] = []
        for plugin_cls in classes:
            try:
                out.append((plugin_cls, plugin_config(plugin_cls, config)))
            except ConfigError as exc:
                errors += exc.errors
        if errors:
            raise ConfigError(errors)
        return out

    @classmethod
    def create(cls, config: Config, node: NodeAPI) -> "Registry":
        """Load, check and instantiate the enabled plugins."""
        plugins: list[Plugin] = []
        for plugin_cls, section in cls.classes(config):
            try:
                plugins.append(plugin_cls(section, node))
            except Exception as exc:
                raise PluginError(f"plugin {plugin_cls.name!r}: cannot be created: "
                                  f"{type(exc).__name__}: {exc}") from exc
        return cls(plugins)

    def with_sections(self, config: Config) -> Config:
        """``config`` holding every plugin's validated section (``config.plugin_config``)."""
        sections = {path: config.plugin_config(path) for path in config.plugin_paths}
        sections.update({section_path(type(p)): p.config for p in self.plugins})
        return config.with_plugin_configs(sections)

    # --- lifecycle ------------------------------------------------------------------------
    async def startup(self) -> None:
        """Run every ``on_startup`` in order. When one raises, the plugins already started are
        shut down and startup fails naming the plugin."""
        started: list[Plugin] = []
        for plugin in self.plugins:
            try:
                await plugin.on_startup()
            except Exception as exc:
                await _shutdown(started)
                raise PluginError(f"plugin {plugin.name!r}, hook 'on_startup' failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
            started.append(plugin)

    async def shutdown(self) -> None:
        """Run every ``on_shutdown`` in reverse order; one that raises is logged, not fatal."""
        await _shutdown(self.plugins)

    # --- GET /api/protocol ----------------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        """Every type the server accepts or sends: its plugin, direction and data schema."""
        out = [_entry(t, "core", "client_to_server", m, d) for t, (m, d) in CORE_TYPES.items()]
        out += [_entry(t, "core", "server_to_client", m, d) for t, (m, d) in CORE_EMITS.items()]
        for handler in sorted(self.handlers.values(), key=lambda h: h.type):
            out.append(_entry(handler.type, handler.plugin.name, "client_to_server",
                              handler.schema, handler.description))
        for plugin in self.plugins:
            for type_, schema in sorted(type(plugin).emits.items()):
                out.append(_entry(type_, plugin.name, "server_to_client", schema,
                                  clean_doc(schema.__doc__) if schema else ""))
        return out

    def error_codes(self) -> list[dict[str, str]]:
        """The core's error codes and every enabled plugin's, with who declares each."""
        out = [{"code": c, "plugin": "core", "description": d} for c, d in ERROR_CODES.items()]
        for plugin in self.plugins:
            out += [{"code": c, "plugin": plugin.name, "description": d}
                    for c, d in type(plugin).errors.items()]
        return out

    def catalogue(self) -> dict[str, Any]:
        """``GET /api/protocol``: message types, error codes and close codes."""
        return {"types": self.describe(), "error_codes": self.error_codes(),
                "close_codes": close_catalogue()}


async def _shutdown(plugins: list[Plugin]) -> None:
    for plugin in reversed(plugins):
        try:
            await plugin.on_shutdown()
        except Exception:
            log.exception("plugin_hook_failed", plugin=plugin.name, hook="on_shutdown")
