"""Notifications: ``notification`` to a user, stored unread and pushed to each of their
connections; the unread ones are sent again on each new connection until ``notification.read``.

Only roles in ``permissions.notify`` may send one over WebSocket. Services send them through the
HTTP API (``POST /api/send``, through :meth:`send_from_api`). Each user keeps their newest
``notifications.max_per_user`` unread notifications for ``notifications.ttl`` seconds
in this plugin's store (a stream per user, shared by every node); a read one is dropped.
"""

from __future__ import annotations

from typing import Any, Mapping

from server.plugin_api import (BaseModel, ConfigDict, Context, ErrorCode, Field, MessageRejected,
                               Plugin, PluginConfig, handles, make_frame)


class NotificationsConfig(PluginConfig):
    """The ``notifications`` section of websocket.yaml (docs/configuration.md)."""

    # unknown keys are the config loader's warnings, as for the core's sections
    model_config = ConfigDict(extra="ignore")
    max_per_user: int = Field(100, gt=0, description="unread notifications kept per user")
    ttl: float = Field(604800.0, gt=0, allow_inf_nan=False, description="seconds one is kept")


class NotificationData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    notification_type: str = Field(min_length=1, description="e.g. new_follower, mention")
    title: str = ""
    message: str = ""
    link: str | None = Field(None, description="where the notification leads, e.g. a URL")
    data: dict[str, Any] = Field(default_factory=dict, description="free fields for the client")


class Notification(NotificationData):
    """A notification for you; ``replayed`` when it is an unread one sent again on connect."""

    replayed: bool = False


class ReadData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(description="ids of notifications to mark read; unknown ids are ignored")


class NotificationPlugin(Plugin[NotificationsConfig]):
    name = "notification"
    Config = NotificationsConfig
    section = "notifications"
    emits = {"notification": Notification}

    async def notify(self, to: str, data: NotificationData | Mapping[str, Any], *,
                     sender: dict[str, str] | None = None) -> dict[str, Any]:
        """Store a notification for user ``to`` (unread) and push it to each of their
        connections. ``data`` is validated (pydantic.ValidationError when it is wrong);
        ``sender`` is the frame's ``from`` (none for a service). Returns the frame."""
        payload = data if isinstance(data, NotificationData) else NotificationData.model_validate(data)
        body = {**payload.model_dump(), "replayed": False}
        note = make_frame("notification", body, to=to, sender=sender)
        cfg = self.config
        await self.store.stream_add(f"unread:{to}", note, maxlen=cfg.max_per_user, ttl=cfg.ttl)
        await self.node.send_to_user(to, "notification", body, id=note["id"], ts=note["ts"], to=to,
                                    sender=sender)
        self.log.debug("notification_sent", to=to, notification_id=note["id"],
                       notification_type=payload.notification_type)
        return note

    async def send_from_api(self, user_id: str, type_: str, data: dict[str, Any]) -> bool:
        """``POST /api/send`` of a ``notification``: stored unread like one sent over WebSocket."""
        await self.notify(user_id, data)
        return True

    @handles("notification", schema=NotificationData,
             description="notify user 'to' (stored unread); only for roles in permissions.notify")
    async def notification(self, ctx: Context[NotificationsConfig], data: NotificationData) -> None:
        if not self.node.permitted(ctx.user, "notify"):
            raise MessageRejected(ErrorCode.FORBIDDEN, "your roles may not send notifications")
        if ctx.to is None:
            raise MessageRejected(ErrorCode.INVALID_MESSAGE, "'to' is required")
        note = await self.notify(ctx.to, data, sender=ctx.user.public())
        await ctx.ack({"id": note["id"]})

    @handles("notification.read", schema=ReadData, description="mark your notifications read")
    async def read(self, ctx: Context[NotificationsConfig], data: ReadData) -> None:
        marked = await self._mark_read(ctx.user.id, data.ids)
        await ctx.ack({"read": marked})

    async def on_connect(self, ctx: Context[NotificationsConfig]) -> None:
        """The unread notifications again, oldest first, marked ``replayed``; as many as fit
        half the outbound queue (the rest stay unread and come on a later connect)."""
        unread = await self._unread(ctx.user.id)
        count = ctx.replay_fit(unread)
        if count < len(unread):
            ctx.log.info("notifications_held_back", replayed=count, waiting=len(unread) - count)
        for note in unread[:count]:
            await ctx.reply("notification", {**note["data"], "replayed": True}, id=note["id"],
                            ts=note["ts"], to=note["to"], sender=note.get("from"))

    # --- the store: a stream of unread notifications per user -------------------------------
    async def _unread(self, user_id: str) -> list[dict[str, Any]]:
        entries = await self.store.stream_read(f"unread:{user_id}", limit=self.config.max_per_user)
        return [note for _, note in entries]

    async def _mark_read(self, user_id: str, ids: list[str]) -> int:
        """Drop the unread notifications among ``ids``; how many there were."""
        key, wanted = f"unread:{user_id}", set(ids)
        entries = await self.store.stream_read(key, limit=self.config.max_per_user)
        found = [entry_id for entry_id, note in entries if note.get("id") in wanted]
        return await self.store.stream_delete(key, found) if found else 0
