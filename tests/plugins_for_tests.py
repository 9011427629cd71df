"""Plugin classes for tests/test_plugins.py, enabled by ``module:Class`` path in
``plugins.enabled``. Most are broken on purpose: each one is a startup failure to report."""

from __future__ import annotations

import asyncio
from typing import Any

from server.plugin_api import (
    BaseModel,
    ConfigDict,
    Connection,
    Context,
    Envelope,
    ErrorCode,
    MessageRejected,
    Plugin,
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
