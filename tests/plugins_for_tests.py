"""Plugin classes for tests/test_plugins.py, enabled by ``module:Class`` path in
``plugins.enabled``. Most are broken on purpose: each one is a startup failure to report."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from server.plugin_api import (
    BaseModel,
    ConfigDict,
    Connection,
    Context,
    Envelope,
    ErrorCode,
    Field,
    MessageRejected,
    NodeAPI,
    Plugin,
    PluginConfig,
    create_model,
    handles,
)


class EchoData(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str


class EchoStage:
    """Drops ``echo`` frames with ``data.drop``, refuses those with ``data.reject``."""

    name = "echo_guard"

    async def process(self, conn: Connection, env: Envelope) -> Envelope | None:
        if env.type == "echo" and env.data.get("drop"):
            return None
        if env.type == "echo" and env.data.get("reject"):
            raise MessageRejected(ErrorCode.FORBIDDEN, "refused by the echo stage")
        return env


class Echo(Plugin):
    """Echoes ``data`` back with how many echoes this connection asked for; says hello on
    connect; records disconnects and shutdown."""

    name = "echo"
    emits = {"echo": EchoData, "hello": None}

    def __init__(self, config: Any, node: Any) -> None:
        super().__init__(config, node)
        self.disconnected = asyncio.Event()
        self.shut_down = False

    @handles("echo", schema=EchoData)
    async def echo(self, ctx: Context, data: EchoData) -> None:
        ctx.state["count"] = ctx.state.get("count", 0) + 1
        ctx.log.info("echoed", count=ctx.state["count"])
        await ctx.reply("echo", {**data.model_dump(), "count": ctx.state["count"]})

    @handles("echo.boom")
    async def boom(self, ctx: Context, data: dict[str, Any]) -> None:
        raise RuntimeError("the plugin has a bug")

    async def on_connect(self, ctx: Context) -> None:
        await ctx.reply("hello", {"plugin": self.name})

    async def on_disconnect(self, ctx: Context) -> None:
        self.disconnected.set()

    async def on_shutdown(self) -> None:
        self.shut_down = True

    def stages(self) -> list[Any]:
        return [EchoStage()]


class ConnectFails(Plugin):
    name = "connectfails"

    async def on_connect(self, ctx: Context) -> None:
        raise RuntimeError("on_connect bug")

    async def on_disconnect(self, ctx: Context) -> None:
        raise RuntimeError("on_disconnect bug")


class StartupFails(Plugin):
    name = "startupfails"

    async def on_startup(self) -> None:
        raise RuntimeError("database unreachable")


class ClaimsJoin(Plugin):
    name = "dupe"

    @handles("join")
    async def join(self, ctx: Context, data: dict[str, Any]) -> None: ...


class ClaimsPing(Plugin):
    name = "pinger"

    @handles("ping")
    async def ping(self, ctx: Context, data: dict[str, Any]) -> None: ...


class SyncHandler(Plugin):
    name = "sync"

    @handles("sync.go")  # type: ignore[type-var]
    def go(self, ctx: Context, data: dict[str, Any]) -> None: ...


class WrongSignature(Plugin):
    name = "badsig"

    @handles("badsig.go")
    async def go(self, ctx: Context) -> None: ...


class SyncHook(Plugin):
    name = "synchook"

    def on_connect(self, ctx: Context) -> None:  # type: ignore[override]
        ...


class BadSchema(Plugin):
    name = "badschema"

    @handles("bad.schema", schema=dict)  # type: ignore[arg-type]
    async def go(self, ctx: Context, data: Any) -> None: ...


class EmitsCore(Plugin):
    name = "emitserror"
    emits = {"error": None}


class EchoTwin(Plugin):
    name = "echotwin"
    emits = {"echo": None}


class InitFails(Plugin):
    name = "initfails"

    def __init__(self, config: Any, node: Any) -> None:
        raise RuntimeError("cannot open its file")


class BadStage(Plugin):
    name = "badstage"

    def stages(self) -> list[Any]:
        return [object()]


class NotAPlugin:
    name = "impostor"


class Nameless(Plugin):
    pass


# --- a reactions plugin written against the plugin API alone (docs/plugins.md) -------------------
class ReactionsConfig(PluginConfig):
    allowed: list[str] = ["+1", "heart"]


def reaction_schema(config: ReactionsConfig) -> type[BaseModel]:
    """The allowed emoji come from the config: an enum in /api/protocol."""
    emoji = Literal[tuple(config.allowed)]  # type: ignore[valid-type]
    return create_model("ReactionData", emoji=(emoji, ...),
                        message_id=(str, Field(min_length=1)))


class Reactions(Plugin[ReactionsConfig]):
    name = "reactions"
    Config = ReactionsConfig
    emits = {"reaction": None}
    errors = {"REACTION_DUPLICATE": "you already reacted to that message with that emoji"}

    def __init__(self, config: ReactionsConfig, node: NodeAPI) -> None:
        super().__init__(config, node)
        self.room_events: list[tuple[str, str]] = []
        self.history_gone = asyncio.Event()

    @handles("reaction.add", schema=reaction_schema)
    async def add(self, ctx: Context[ReactionsConfig], data: Any) -> None:
        """React to a message of a room you are in.

            ``data.emoji`` is one of the configured ones; see :class:`ReactionsConfig`.
        """
        room = ctx.room
        if room is None or room not in ctx.conn.rooms:
            raise MessageRejected(ErrorCode.NOT_IN_ROOM, "join the room first")
        if await self.node.room_message(room, data.message_id) is None:
            raise MessageRejected(ErrorCode.NOT_FOUND, "no such message",
                                  details={"message_id": data.message_id})
        field = f"{ctx.user.id}:{data.emoji}"
        if await self.store.hash_get(f"{room}:{data.message_id}", field) is not None:
            raise MessageRejected("REACTION_DUPLICATE", "already reacted",
                                  details={"message_id": data.message_id, "emoji": data.emoji})
        await self.store.hash_set(f"{room}:{data.message_id}", field, True)
        await ctx.send_to_room(room, "reaction", {"message_id": data.message_id,
                                                  "emoji": data.emoji})
        await ctx.ack()

    async def on_room_created(self, room: str) -> None:
        self.room_events.append(("created", room))

    async def on_room_deleted(self, room: str) -> None:
        self.room_events.append(("deleted", room))

    async def on_history_expired(self, room: str) -> None:
        self.room_events.append(("history expired", room))
        self.history_gone.set()
