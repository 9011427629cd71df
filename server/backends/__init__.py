"""Backend interfaces (``base``) and their implementations: ``memory`` (default) and ``redis``."""

from __future__ import annotations

from ..config import Config
from .base import Backend


def create_backend(config: Config, node_id: str) -> Backend:
    if config.backend.type == "redis":
        from .redis import create_redis_backend

        return create_redis_backend(config, node_id)
    from .memory import MemoryBackend

    return MemoryBackend(node_id, config)
