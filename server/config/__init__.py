"""Typed, frozen configuration loaded from ``websocket.yaml`` plus environment overrides.

``schema`` holds the sections and :class:`Config`; ``loader`` reads, merges and validates
(:func:`load_config`, with the plugins' sections when given ``plugin_sections``); ``env`` the
environment overrides; ``messages`` how every problem reads. docs/configuration.md is the
operator's reference; adding an option is described at the top of ``schema``.
"""

from .base import FieldError, KeyPath, Section
from .env import ENV_PREFIX, ENV_SHORTHANDS, apply_env
from .loader import LoadedConfig, PluginSections, load_config
from .messages import validation_messages
from .schema import (DEV_SECRET, ApiConfig, AuthConfig, BackendConfig, Config,
                     ConversationsConfig, FilterConfig,
                     LoggingConfig, MessagesConfig, MetricsConfig, NamespaceConfig,
                     PermissionsConfig, PluginsConfig, RateLimitConfig, RedisConfig, RoomOptions,
                     RoomsConfig, SecurityConfig, ServerConfig, TypeRate)

__all__ = [
    "DEV_SECRET", "ENV_PREFIX", "ENV_SHORTHANDS", "ApiConfig", "AuthConfig", "BackendConfig",
    "Config", "ConversationsConfig", "FieldError", "FilterConfig", "KeyPath", "LoadedConfig",
    "LoggingConfig", "MessagesConfig", "MetricsConfig", "NamespaceConfig",
    "PermissionsConfig", "PluginSections", "PluginsConfig", "RateLimitConfig",
    "RedisConfig", "RoomOptions", "RoomsConfig", "SecurityConfig", "Section", "ServerConfig",
    "TypeRate", "apply_env", "load_config", "validation_messages",
]
