"""Reloading ``websocket.yaml`` without a restart: SIGHUP and ``POST /api/config/reload``.

The file is read and checked as at startup (environment and command-line flags applied again,
plugins checked). A file with errors changes nothing: the errors are returned (and logged) with
their key paths. Otherwise the options in :data:`LIVE` take effect at once, for the connections
already open too, and none of them is closed; every other changed option is reported as
waiting for a restart and is not applied, so the running config stays one a restart would not
contradict halfway.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, TypeVar, get_args

import structlog
from aiohttp import web
from pydantic import BaseModel

from .config import Config, KeyPath, LoggingConfig
from .errors import ConfigError, PluginError
from .log import set_level
from .pipeline import Pipeline, build_pipeline
from .registry import Registry, load
from .node import Node

log = structlog.get_logger(__name__)
M = TypeVar("M", bound=BaseModel)

#: what a reload applies to the running server (a section, or one option of a section)
LIVE: tuple[KeyPath, ...] = (
    ("rate_limit",), ("messages",), ("security",), ("rooms",), ("permissions",), ("api",),
    ("metrics",), ("server", "max_connections"), ("server", "trusted_proxies"),
    ("logging", "level"),
)
#: per-connection state the pipeline's stages build from config ("core.rate_limit", ...)
_CORE_STATE = "core."
_LEVELS = list(get_args(LoggingConfig.model_fields["level"].annotation))


@dataclass(frozen=True)
class Reloaded:
    #: options now in effect with their new value
    applied: list[str]
    #: options changed in the file that take effect at the next start
    restart_required: list[str]
    warnings: list[str]


def changed_paths(old: Any, new: Any, path: KeyPath = (),
                  claimed: frozenset[KeyPath] | None = None) -> list[KeyPath]:
    """The key paths whose value differs between two configs: sections walked into, the
    plugins' sections too (compared as their validated models, so writing out a default
    changes nothing); a section no plugin claimed as a whole."""
    if isinstance(old, BaseModel) and type(old) is type(new):
        found: list[KeyPath] = []
        top = claimed is None
        if claimed is None:
            claimed = frozenset(getattr(old, "plugin_paths", ())) | frozenset(
                getattr(new, "plugin_paths", ()))
        for name in type(old).model_fields:
            found += changed_paths(getattr(old, name), getattr(new, name), path + (name,), claimed)
        extra_old, extra_new = old.model_extra or {}, new.model_extra or {}
        for name in sorted(extra_old.keys() | extra_new.keys()):
            if path + (name,) not in claimed and extra_old.get(name) != extra_new.get(name):
                found.append(path + (name,))
        for section in sorted(claimed) if top else ():
            found += changed_paths(_plugin_section(old, section), _plugin_section(new, section),
                                   section, claimed)
        return found
    return [] if old == new else [path]


def _plugin_section(config: Any, path: KeyPath) -> Any:
    """The validated section at ``path``, else the mapping as written (``{}`` when absent)."""
    try:
        return config.plugin_config(path)
    except KeyError:
        raw = config.plugin_section(path[1]) if path[0] == "plugins" else \
            (config.model_extra or {}).get(path[0])
        return raw if isinstance(raw, dict) else {}


def _live(path: KeyPath) -> bool:
    return any(path[:len(prefix)] == prefix for prefix in LIVE)


def _with(old: M, new: M, path: KeyPath) -> M:
    """``old`` with the value at ``path`` taken from ``new``."""
    head, rest = path[0], path[1:]
    value = getattr(new, head) if not rest else _with(getattr(old, head), getattr(new, head), rest)
    return old.model_copy(update={head: value})


class Guard(Protocol):
    """The upgrade guard (``http/guards.py``), which re-reads its limits from a new config."""

    def configure(self, config: Config) -> None: ...


class Reloader:
    def __init__(self, node: Node, guard: Guard, pipeline: Pipeline,
                 registry: Registry, overrides: Mapping[str, Any] | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.node = node
        self.guard = guard
        self.pipeline = pipeline
        self.registry = registry
        self.overrides = overrides
        self.env = env
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def _read(self) -> tuple[Config, list[str]]:
        loaded = load(self.node.config_path,
                             os.environ if self.env is None else self.env, overrides=self.overrides)
        try:
            Registry.classes(loaded.config)
        except PluginError as exc:
            raise ConfigError([str(exc)], loaded.warnings) from None
        except ConfigError as exc:
            raise ConfigError(exc.errors, loaded.warnings) from None
        return loaded.config, loaded.warnings

    async def reload(self, *, everywhere: bool = True) -> Reloaded:
        """Re-read the file and apply it; raises ConfigError (nothing changed) when invalid.
        Then, unless ``everywhere`` is off, every other node re-reads its own file too (the
        control channel's ``reload``)."""
        async with self._lock:
            source = self.node.config_path or "(no file: defaults and environment)"
            try:
                new, warnings = self._read()
            except ConfigError as exc:
                log.error("config_reload_failed", path=source, errors=exc.errors)
                raise
            old = self.node.config
            changed = changed_paths(old, new)
            applied = [p for p in changed if _live(p)]
            config = old
            for path in applied:
                config = _with(config, new, path)
            await self._apply(old, config)
            result = Reloaded([".".join(p) for p in applied],
                              [".".join(p) for p in changed if not _live(p)], warnings)
            # the log level changes around this line so that it is written either way
            quieter = _LEVELS.index(config.logging.level) > _LEVELS.index(old.logging.level)
            if not quieter:
                set_level(config.logging.level)
            log.info("config_reloaded", path=source, applied=result.applied,
                     restart_required=result.restart_required)
            if quieter:
                set_level(config.logging.level)
            for warning in warnings:
                log.warning("config_warning", detail=warning)
        if everywhere:
            await self.node.control("reload")
        return result

    async def _apply(self, old: Config, config: Config) -> None:
        node = self.node
        node.config = config
        self.guard.configure(config)
        fresh = build_pipeline(config, self.registry.stages)
        # in place: every open connection's read loop holds this pipeline
        self.pipeline.stages, self.pipeline.messages = fresh.stages, fresh.messages
        for conn in tuple(node.hub.connections.values()):
            for key in [k for k in conn.state if k.startswith(_CORE_STATE)]:
                del conn.state[key]  # rebuilt from the new limits at the next frame
        for room in config.rooms.default_rooms:
            if room not in old.rooms.default_rooms:
                await node.backend.rooms.create(room)

    def reload_soon(self, everywhere: bool = True) -> None:
        """For a signal handler: reload in a task of its own (one after the other when signals
        come quickly); the outcome is logged."""
        task = asyncio.get_running_loop().create_task(self._reload_logged(everywhere))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_control(self, message: dict[str, Any]) -> None:
        """The control channel's ``reload`` from another node: re-read this node's file."""
        if message.get("origin") != self.node.node_id:
            self.reload_soon(everywhere=False)

    async def _reload_logged(self, everywhere: bool = True) -> None:
        try:
            await self.reload(everywhere=everywhere)
        except ConfigError:
            pass  # logged with its errors; the old config stays
        except Exception:
            log.exception("config_reload_crashed")


RELOADER: web.AppKey[Reloader] = web.AppKey("switchboard_reloader", Reloader)
