"""Private conversations, as the node keeps and reads them: each private message is kept in
its pair's conversation (``Backend.conversations``, ``conversations`` section of the config)
and tops both users' lists of conversations. The inbox (delivery to users with no open
connection) is apart from this and keeps its own copy."""

from __future__ import annotations

from typing import Any

from .backends.base import Backend, ConversationEntry, HistoryPage, pair_key
from .config import ConversationsConfig
from .rooms import check_name


async def keep_private(backend: Backend, cfg: ConversationsConfig, sender: str, to: str,
                       message: dict[str, Any]) -> None:
    """Keep a private message in the pair's conversation (setting its ``offset``) and at the
    top of both users' lists; with ``history_size`` 0 nothing of it is kept (it is numbered
    all the same)."""
    await backend.conversations.append(sender, to, message, size=cfg.history_size,
                                       ttl=cfg.history_ttl, keep=cfg.max_per_user)


async def conversation_page(backend: Backend, user_id: str, peer: str, since: str | None, *,
               limit: int) -> HistoryPage:
    """A page of ``user_id``'s conversation with ``peer``, as a room's history is paged."""
    check_name("to", peer)
    return await backend.conversations.history.since(pair_key(user_id, peer), since, limit=limit)


async def recent_conversations(backend: Backend, cfg: ConversationsConfig, user_id: str, *,
                 limit: int) -> list[ConversationEntry]:
    """``user_id``'s conversations, the most recent first."""
    return await backend.conversations.recent(user_id, limit=limit, ttl=cfg.history_ttl)
