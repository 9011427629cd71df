"""The event loop ``switchboard serve`` runs on (``server.event_loop``): uvloop when it is
installed (the ``speed`` extra, ``pip install 'switchboard[speed]'``), else asyncio's own.

This is the only module that imports uvloop. The loop is made by ``asyncio.Runner``'s
``loop_factory`` (uvloop's ``new_event_loop``), not by uvloop's deprecated ``install()``: no
event-loop policy is changed, so nothing else in the process (a test runner, a tool) is moved
onto uvloop by importing the server.

uvloop's transports are not subclasses of asyncio's ``Transport`` (nor its servers of
``asyncio.Server``, nor ``get_extra_info("socket")`` a ``socket.socket``, but a stand-in with
``setsockopt``, ``getsockname`` and ``family``): code that must work on both loops uses the
transport's methods and never checks its class.
"""

from __future__ import annotations

import asyncio
from functools import cache
from typing import Callable, Literal

from .errors import ConfigError

#: ``server.event_loop``: ``auto`` is uvloop when it is installed, else asyncio
Setting = Literal["auto", "asyncio", "uvloop"]
#: the loop a server runs on, as ``/api/stats``, the ``server_listening`` line and the
#: ``switchboard_info`` metric report it
Name = Literal["uvloop", "asyncio"]
Factory = Callable[[], asyncio.AbstractEventLoop]

#: why ``server.event_loop: uvloop`` cannot be had (the error names the key in front of it)
NOT_INSTALLED = ("uvloop is not installed: install it (pip install 'switchboard[speed]') or set "
                 "auto (uvloop when installed, else asyncio) or asyncio")


@cache
def _uvloop() -> Factory | None:
    try:
        import uvloop
    except ImportError:  # not installed, or a broken install: asyncio's loop it is
        return None
    return uvloop.new_event_loop


def uvloop_available() -> bool:
    return _uvloop() is not None


def chosen(setting: Setting) -> Name:
    """The loop ``setting`` runs on in this installation."""
    if setting == "auto":
        return "uvloop" if uvloop_available() else "asyncio"
    return setting


def factory(setting: Setting) -> Factory | None:
    """The loop factory for ``setting``; None for asyncio's default loop. ConfigError for
    ``uvloop`` when it is not installed (the config's own check says so first)."""
    if setting == "asyncio":
        return None
    made = _uvloop()
    if made is None and setting == "uvloop":
        raise ConfigError([f"server.event_loop: {NOT_INSTALLED}"])
    return made


def runner(setting: Setting) -> asyncio.Runner:
    """An ``asyncio.Runner`` on the loop ``setting`` asks for::

        with event_loop.runner(config.server.event_loop) as run:
            return run.run(main())
    """
    return asyncio.Runner(loop_factory=factory(setting))


def name(loop: asyncio.AbstractEventLoop) -> Name:
    """Which loop ``loop`` is (uvloop's class lives in the ``uvloop`` package)."""
    return "uvloop" if type(loop).__module__.partition(".")[0] == "uvloop" else "asyncio"


def running() -> Name | None:
    """The loop running in this thread, or None outside one."""
    try:
        return name(asyncio.get_running_loop())
    except RuntimeError:
        return None
