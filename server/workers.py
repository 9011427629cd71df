"""``switchboard serve --workers N``: N processes serving one address, each its own node.

One Python process runs on one core; N workers use up to N cores of one machine. Each worker
is a whole Switchboard node (its own node id, hub, plugins and connections) on the shared
Redis, which is what makes them one server: that is why N > 1 needs ``backend.type: redis``.

Process model. The parent (:func:`supervise`) never serves: it checks the address is free,
starts the workers and watches them. Each worker is the plain single-process ``serve`` run as
``python -m server serve`` with the parent's config file and ``--host``/``--port``, plus two
internal flags (``--worker K --worker-fd FD``, hidden from ``--help``). A worker binds its own
listening socket with ``SO_REUSEPORT`` and the kernel spreads new connections over the
workers' sockets (Linux balances them; a worker that is gone stops getting any). When
``server.node_id`` is set, worker K's node id is that id with ``-K`` appended (through
``WS_SERVER_NODE_ID`` in its environment, so a reload in the worker keeps it); otherwise each
worker makes its own (host name and a random suffix), as one process does.

Why subprocesses of ``python -m server serve`` rather than ``multiprocessing`` with "spawn":
a worker is then exactly the single-process server (same code path, same config loading,
same signal handling and SIGHUP reload, same event loop: ``server.event_loop``, its log lines
on the same stderr), nothing has to be pickled across (the config, the app), and there is no
multiprocessing machinery (resource tracker, the re-import of ``__main__`` under a
console-script entry point) to reason about. The parent, which serves nothing, runs on
asyncio's own loop.
Forking the parent is no option either way: it would copy an event loop and live sockets.

Parent and worker share a socketpair (the worker's end is ``--worker-fd``): the worker writes
``ready`` on it once it listens, and stops by itself (as on SIGTERM) when it reads end of file,
which happens when the parent is gone, even killed with SIGKILL: no worker outlives its parent.

Signals. SIGTERM and SIGINT to the parent are forwarded to every worker; each drains as one
process does (open connections closed with 1001, exit within ``server.shutdown_timeout``) and
the parent exits when all have: 0 when each exited cleanly, 1 otherwise; a worker still running
``STOP_GRACE`` seconds after the shutdown timeout is killed (SIGKILL) and the exit is 1. SIGHUP
goes to one worker only: a node that reloads has every other node on the Redis re-read its own
file (the control channel's ``reload``), the other workers included; sending it to each worker
would reload every node N times.

A worker that dies unexpectedly is logged (``worker_exited``) and, when it had been serving,
restarted after ``RESTART_DELAY`` seconds with the same number and node id (its clients
reconnect, to any worker). A worker that dies before it ever listened (the port taken, a plugin
failing at startup, a broken config) would only die again: the parent stops the others and
exits with that worker's code (1 if it was killed by a signal). The exit code reports how the
workers ended, not a crash that was repaired by a restart (that one is in the log).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import structlog

if TYPE_CHECKING:
    from .config import Config

log = structlog.get_logger(__name__)

#: what a worker writes on its link once it listens
READY = b"ready\n"
#: seconds between a serving worker's unexpected exit and its restart
RESTART_DELAY = 1.0
#: seconds past ``server.shutdown_timeout`` before the parent kills a worker still stopping
STOP_GRACE = 5.0
#: the signals that stop the workers (forwarded to each)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def positive_count(text: str) -> int:
    """``--workers``: a whole number of at least 1 (argparse type)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def refusal(workers: int, config: Config) -> str | None:
    """Why ``--workers`` cannot run with this config, or None (always None for 1 worker)."""
    if workers <= 1:
        return None
    if config.backend.type == "memory":
        return (f"--workers {workers} needs backend.type: redis: with the memory backend each "
                "process would be a separate server (rooms, presence and history not shared)")
    if config.server.port == 0:
        return (f"--workers {workers} needs a fixed port, not 0: each worker would pick a "
                "different free port (set --port or server.port)")
    if not hasattr(socket, "SO_REUSEPORT"):
        return f"--workers {workers} needs SO_REUSEPORT, which this platform does not have"
    return None


def address_in_use(host: str, port: int) -> OSError | None:
    """Bind ``host:port`` the way one process would (without ``SO_REUSEPORT``) and let go: the
    error when something listens there already. The workers' own ``SO_REUSEPORT`` binds would
    otherwise silently share the port with another ``serve --workers`` on it."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except OSError as exc:
        return exc
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPV6_V6ONLY"):
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
        except OSError as exc:
            return exc
    return None


def worker_command(config_path: str | None, host: str | None, port: int | None) -> list[str]:
    """The ``serve`` command line of a worker, without its internal flags."""
    argv = [sys.executable, "-m", "server", "serve"]
    if config_path:
        argv += ["-c", config_path]
    if host is not None:
        argv += ["--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    return argv


# --- the worker's side ------------------------------------------------------------------------
class ParentLink:
    """A worker's end of the socketpair its parent made (``--worker-fd``)."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)

    def ready(self, on_parent_gone: Callable[[], None]) -> None:
        """Tell the parent this worker listens; call ``on_parent_gone`` once the parent's end
        closes (the parent exited, however it did)."""
        loop = asyncio.get_running_loop()
        try:
            self.sock.send(READY)
        except OSError:  # the parent is gone already
            on_parent_gone()
            return

        def readable() -> None:
            try:
                data = self.sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(self.sock.fileno())
                log.warning("parent_gone", detail="the supervising process exited: stopping")
                on_parent_gone()

        loop.add_reader(self.sock.fileno(), readable)


# --- the parent's side ------------------------------------------------------------------------
@dataclass
class _Worker:
    number: int
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    ever_ready: bool = False


class Supervisor:
    def __init__(self, count: int, argv: list[str], config: Config) -> None:
        self.argv = argv
        self.config = config
        self.workers = [_Worker(k) for k in range(1, count + 1)]
        self.code = 0
        self.stop_signal: int | None = None
        self.stopping = asyncio.Event()
        self._announced = False

    # signals
    def stop(self, sig: int, reason: str = "signal") -> None:
        """Stop every worker (again, on a second signal)."""
        if self.stop_signal is None:
            self.stop_signal = sig
            log.info("workers_stopping", reason=reason, signal=signal.Signals(sig).name,
                     shutdown_timeout=self.config.server.shutdown_timeout)
        self.stopping.set()
        self.forward(sig)

    def forward(self, sig: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode is None:
                try:
                    worker.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def reload(self) -> None:
        """SIGHUP: to the first worker that runs; it has every node reload (reload.py)."""
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode is None:
                try:
                    worker.proc.send_signal(signal.SIGHUP)
                except ProcessLookupError:
                    continue
                log.info("workers_reload", worker=worker.number, pid=worker.proc.pid)
                return
        log.warning("workers_reload_skipped", detail="no worker is running")

    def fail(self, code: int) -> None:
        if not self.code:
            self.code = code if code > 0 else 1
        if not self.stopping.is_set():
            self.stop(signal.SIGTERM, reason="worker_failed")

    # one worker, for as long as the parent runs
    def _env(self, number: int) -> dict[str, str]:
        env = dict(os.environ)
        if self.config.server.node_id:
            env["WS_SERVER_NODE_ID"] = f"{self.config.server.node_id}-{number}"
        return env

    async def keep(self, worker: _Worker) -> None:
        """Run ``worker``, restart it when it dies after it served, until the parent stops."""
        try:
            await self._keep(worker)
        except Exception:  # a bug here must not leave the parent waiting for nothing
            log.exception("supervisor_failed", worker=worker.number)
            self.fail(1)

    async def _keep(self, worker: _Worker) -> None:
        while True:
            code = await self._run_once(worker)
            if self.stopping.is_set():
                clean = code == 0 or (self.stop_signal is not None and code == -self.stop_signal)
                (log.info if clean else log.error)("worker_exited", worker=worker.number,
                                                   code=code, expected=True)
                if not clean:
                    self.fail(code)
                return
            if not worker.ready:
                log.error("worker_failed", worker=worker.number, code=code,
                          detail="exited before it listened; stopping the others")
                self.fail(code)
                return
            (log.error if code else log.warning)("worker_exited", worker=worker.number,
                                                 code=code, expected=False)
            log.info("worker_restarting", worker=worker.number, delay=RESTART_DELAY)
            try:
                async with asyncio.timeout(RESTART_DELAY):
                    await self.stopping.wait()
                return  # stopped while waiting to restart
            except TimeoutError:
                pass

    async def _run_once(self, worker: _Worker) -> int:
        parent_end, child_end = socket.socketpair()
        with parent_end:
            try:
                fd = child_end.fileno()
                proc = await asyncio.create_subprocess_exec(
                    *self.argv, "--worker", str(worker.number), "--worker-fd", str(fd),
                    pass_fds=(fd,), stdin=asyncio.subprocess.DEVNULL, env=self._env(worker.number))
            finally:
                child_end.close()
            worker.proc, worker.ready = proc, False
            node = self._env(worker.number).get("WS_SERVER_NODE_ID")
            log.info("worker_started", worker=worker.number, pid=proc.pid,
                     **({"node": node} if node else {}))
            if self.stop_signal is not None:  # a stop came while it was being started
                self.forward(self.stop_signal)
            parent_end.setblocking(False)
            waiting = asyncio.get_running_loop().create_task(self._wait_ready(worker, parent_end))
            try:
                return await proc.wait()
            finally:
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)

    async def _wait_ready(self, worker: _Worker, link: socket.socket) -> None:
        try:
            data = await asyncio.get_running_loop().sock_recv(link, 64)
        except OSError:
            return
        if not data.startswith(READY):
            return  # the worker exited first
        worker.ready = worker.ever_ready = True
        assert worker.proc is not None
        log.info("worker_ready", worker=worker.number, pid=worker.proc.pid)
        if not self._announced and all(w.ever_ready for w in self.workers):
            self._announced = True
            srv = self.config.server
            log.info("workers_ready", workers=len(self.workers), host=srv.host, port=srv.port,
                     pids=[w.proc.pid for w in self.workers if w.proc is not None])

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        srv = self.config.server
        log.info("workers_starting", workers=len(self.workers), host=srv.host, port=srv.port,
                 pid=os.getpid())
        tasks = [loop.create_task(self.keep(w)) for w in self.workers]
        await self.stopping.wait()
        limit = srv.shutdown_timeout + 1.0 + STOP_GRACE
        _, pending = await asyncio.wait(tasks, timeout=limit)
        if pending:
            for worker in self.workers:
                if worker.proc is not None and worker.proc.returncode is None:
                    log.error("worker_killed", worker=worker.number, pid=worker.proc.pid,
                              detail=f"still running {limit:g} s after the stop")
                    worker.proc.kill()
            await asyncio.wait(pending, timeout=STOP_GRACE)
            self.code = self.code or 1
        log.info("workers_stopped", code=self.code)
        return self.code


def supervise(count: int, argv: list[str], config: Config) -> int:
    """Run ``count`` workers of ``argv`` (see :func:`worker_command`) until SIGTERM or SIGINT,
    or until one fails to start; the exit code. Logging is configured already."""
    srv = config.server
    problem = address_in_use(srv.host, srv.port)
    if problem is not None:
        log.error("listen_failed", host=srv.host, port=srv.port, error=str(problem))
        return 1
    return asyncio.run(Supervisor(count, argv, config).run())
