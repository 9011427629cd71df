"""Real services for the tests: ``redis-server`` (one server or a 3-master Redis Cluster) and
``nginx``, each started as a child process of the test run on free loopback ports, in its own
temporary directory, and stopped by the fixtures' teardown (an ``atexit`` hook kills whatever is
still running when the interpreter exits).

The machine may run its own Redis on 6379; nothing here ever uses it: every server gets a port
from :func:`free_port`. ``tests/run.sh`` installs ``redis-server`` and ``nginx`` where missing.

Use the fixtures through a ``pytest_plugins`` line in the test module::

    pytest_plugins = ["tests.services"]

    async def test_something(redis_url: str) -> None: ...

That registers this module once for the whole run, so the session-scoped ``redis_server`` and
``redis_cluster`` are started at most once per session, however many modules use them.
(``from tests.services import redis_server, redis_url`` works too, but then pytest keeps one
"session" server per importing module.)

Fixtures:

* ``redis_server`` (session): one :class:`RedisServer` shared by the session.
* ``redis_url`` (function): FLUSHALLs the session server, returns its ``redis://`` URL.
* ``redis_cluster`` (session): one :class:`RedisCluster` of 3 masters shared by the session.
* ``cluster_url`` (function): FLUSHALLs every master, returns the seed node's URL.
* ``fresh_redis`` (function): a :class:`RedisServer` of the test's own, to stop, kill and
  restart (on the same port) for outage tests.

Every wait is bounded and polls with a short interval; a service that fails to start raises
:class:`ServiceError` with the tail of its log.

PYTEST_DONT_REWRITE: this module holds no test assertions; the marker lets a test module both
import its classes and name it in ``pytest_plugins`` (otherwise pytest warns that it was
imported before it could be rewritten, an error under this suite's ``filterwarnings``).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import pytest

__all__ = [
    "NGINX_BIN",
    "NGINX_PROXY_TEMPLATE",
    "REDIS_CLI_BIN",
    "REDIS_SERVER_BIN",
    "NginxServer",
    "RedisCluster",
    "RedisServer",
    "ServiceError",
    "cluster_url",
    "fresh_redis",
    "free_port",
    "redis_cluster",
    "redis_command",
    "redis_server",
    "redis_url",
    "wait_for_port",
]

REDIS_SERVER_BIN = os.environ.get("SWITCHBOARD_REDIS_SERVER", "redis-server")
REDIS_CLI_BIN = os.environ.get("SWITCHBOARD_REDIS_CLI", "redis-cli")
NGINX_BIN = os.environ.get("SWITCHBOARD_NGINX", "/usr/sbin/nginx")

HOST = "127.0.0.1"
POLL_INTERVAL = 0.02
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
CLUSTER_TIMEOUT = 30.0
#: a freshly picked port can be taken by someone else before the service binds it: retry
BIND_ATTEMPTS = 3


class ServiceError(RuntimeError):
    """A service did not start, did not answer in time, or a command against it failed."""


# ---------------------------------------------------------------------------------------------
# process bookkeeping: nothing started here outlives the interpreter


_live: set[subprocess.Popen[bytes]] = set()
_tmp_dirs: set[Path] = set()


def _spawn(argv: Sequence[str], *, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session (so its whole process group can be killed), its
    stdout and stderr appended to ``log``."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    _live.add(proc)
    return proc


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group led by ``proc`` (its leader may already be gone)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _terminate(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
               timeout: float = STOP_TIMEOUT) -> None:
    """Send ``sig`` and wait for the exit (at most ``timeout``, then SIGKILL the group);
    always reaps the process and anything left in its group."""
    try:
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.wait(STOP_TIMEOUT)
    finally:
        # nginx workers would outlive a killed master; redis has no children (no saves)
        _kill_group(proc)
        _live.discard(proc)


def _make_tmp_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _tmp_dirs.add(path)
    return path


def _remove_tmp_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    _tmp_dirs.discard(path)


@atexit.register
def _cleanup_at_exit() -> None:
    for proc in list(_live):
        _kill_group(proc)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process SIGKILL cannot end
            pass
        _live.discard(proc)
    for path in list(_tmp_dirs):
        _remove_tmp_dir(path)


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# ---------------------------------------------------------------------------------------------
# ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, *, host: str = HOST, timeout: float = START_TIMEOUT,
                  proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``host:port`` accepts a TCP connection (polls every 20 ms, at most
    ``timeout`` seconds); fails early if ``proc`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        if _accepts(port, host):
            return
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process exited with {proc.returncode} before {host}:{port} "
                               "accepted connections")
        if time.monotonic() > deadline:
            raise ServiceError(f"{host}:{port} did not accept connections within {timeout} s")
        time.sleep(POLL_INTERVAL)


# ---------------------------------------------------------------------------------------------
# a minimal RESP client: readiness polling and the fixtures' FLUSHALL without a client library


def _resp_encode(args: Sequence[str]) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def redis_command(port: int, *args: str, host: str = HOST, timeout: float = 2.0) -> str:
    """Send one command to the Redis at ``host:port``; its reply as text (simple string,
    bulk string or integer). An error reply raises :class:`ServiceError`."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_resp_encode(args))
        reader = sock.makefile("rb")
        try:
            line = reader.readline()
            if not line.endswith(b"\r\n"):
                raise ServiceError(f"connection to {host}:{port} closed mid-reply")
            kind, rest = line[:1], line[1:-2].decode(errors="replace")
            if kind in (b"+", b":"):
                return rest
            if kind == b"-":
                raise ServiceError(f"redis {host}:{port} {' '.join(args)}: {rest}")
            if kind == b"$":
                size = int(rest)
                return "" if size < 0 else reader.read(size + 2)[:-2].decode(errors="replace")
            raise ServiceError(f"unexpected reply to {args[0]} from {host}:{port}: {line!r}")
        finally:
            reader.close()


def _answers_ping(port: int) -> bool:
    try:
        return redis_command(port, "PING", timeout=0.5) == "PONG"
    except (OSError, ServiceError):
        return False


# ---------------------------------------------------------------------------------------------
# Redis


class _Service:
    """What RedisServer and NginxServer share: a port kept across restarts, a temporary
    directory with the log file, and a process (the leader of its group) to stop."""

    _log_name = "service.log"
    _own_dir = True
    _port: int
    dir: Path
    _proc: subprocess.Popen[bytes] | None

    @property
    def port(self) -> int:
        return self._port

    @property
    def log_path(self) -> Path:
        return self.dir / self._log_name

    @property
    def pid(self) -> int | None:
        """The process's pid (the leader of its process group) while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        """The service's log so far (every start's)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM and wait for the exit; SIGKILL of the whole process group after
        ``timeout``. No-op when stopped."""
        if self._proc is not None:
            _terminate(self._proc, signal.SIGTERM, timeout)
            self._proc = None

    def close(self) -> None:
        """Stop and remove the temporary directory (when this object made it)."""
        self.stop()
        if self._own_dir:
            _remove_tmp_dir(self.dir)


class RedisServer(_Service):
    """One ``redis-server`` on 127.0.0.1, no persistence, in a temporary directory.

    The port is picked on construction (or given) and kept: :meth:`start` after :meth:`stop`
    or :meth:`kill` brings the server back on the SAME port, as a restarted Redis would be
    (its data is gone: nothing is saved). Nothing runs until :meth:`start` (or ``with``)::

        with RedisServer() as server:
            server.cli("SET", "k", "v")
            server.stop(); server.start()          # an outage of the same server
    """

    _log_name = "redis.log"

    def __init__(self, *extra_args: str, port: int | None = None,
                 directory: Path | None = None, cluster_node_timeout_ms: int | None = None,
                 start_timeout: float = START_TIMEOUT) -> None:
        """``extra_args`` go to ``redis-server`` after the standard ones (e.g.
        ``"--maxmemory", "10mb"``). ``cluster_node_timeout_ms`` makes it a cluster node
        (``--cluster-enabled yes``, config file ``nodes-PORT.conf`` in its directory, the
        cluster bus on a free port of its own: ``--cluster-port``)."""
        self.extra_args: tuple[str, ...] = extra_args
        self._fixed_port = port is not None
        self._port: int = port if port is not None else free_port()
        # the cluster bus port (otherwise PORT + 10000: neither free nor valid above 55535)
        self._bus_port: int | None = free_port() if cluster_node_timeout_ms is not None else None
        self._own_dir = directory is None
        self.dir = directory if directory is not None else _make_tmp_dir("sb-redis-")
        self.cluster_node_timeout_ms = cluster_node_timeout_ms
        self.start_timeout = start_timeout
        self._proc = None
        self._started_once = False

    # -- addresses --

    @property
    def host(self) -> str:
        return HOST

    @property
    def bus_port(self) -> int | None:
        """The cluster bus port of a cluster node (None otherwise)."""
        return self._bus_port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self._port}/0"

    # -- life cycle --

    def argv(self) -> list[str]:
        args = [REDIS_SERVER_BIN, "--save", "", "--appendonly", "no", "--protected-mode", "yes",
                "--bind", HOST, "--port", str(self._port), "--dir", str(self.dir)]
        if self.cluster_node_timeout_ms is not None:
            args += ["--cluster-enabled", "yes",
                     "--cluster-config-file", f"nodes-{self._port}.conf",
                     "--cluster-port", str(self._bus_port),
                     "--cluster-node-timeout", str(self.cluster_node_timeout_ms)]
        return args + list(self.extra_args)

    def start(self) -> RedisServer:
        """Start the server (again) and wait until it answers PING (at most
        ``start_timeout`` s). The first start of an auto-picked port that turns out to be
        taken retries on another one; later starts always reuse the same port."""
        if self.running:
            return self
        attempts = 1 if (self._fixed_port or self._started_once) else BIND_ATTEMPTS
        for attempt in range(attempts):
            try:
                self._start_once()
            except ServiceError:
                if attempt + 1 < attempts and "in use" in _log_tail(self.log_path, 5):
                    self._port = free_port()
                    if self._bus_port is not None:
                        self._bus_port = free_port()
                    continue
                raise
            self._started_once = True
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _start_once(self) -> None:
        marker = self.log_path.stat().st_size if self.log_path.exists() else 0
        proc = _spawn(self.argv(), cwd=self.dir, log=self.log_path)
        self._proc = proc
        deadline = time.monotonic() + self.start_timeout
        while not _answers_ping(self._port):
            if proc.poll() is not None or time.monotonic() > deadline:
                exited = proc.poll() is not None
                _terminate(proc, signal.SIGKILL)
                self._proc = None
                text = self.log_path.read_bytes()[marker:].decode(errors="replace")
                why = f"exited with {proc.returncode}" if exited else \
                    f"did not answer PING within {self.start_timeout} s"
                raise ServiceError(f"redis-server on port {self._port} {why}:\n"
                                   + "\n".join(text.splitlines()[-30:]))
            time.sleep(POLL_INTERVAL)

    def kill(self) -> None:
        """SIGKILL (a crash: no shutdown at all) and reap. No-op when stopped."""
        if self._proc is not None:
            _terminate(self._proc, signal.SIGKILL)
            self._proc = None

    def restart(self) -> RedisServer:
        """:meth:`stop` then :meth:`start` on the same port."""
        self.stop()
        return self.start()


    # awaitable variants for async tests whose event loop must keep running meanwhile

    async def astart(self) -> RedisServer:
        return await asyncio.to_thread(self.start)

    async def astop(self, timeout: float = STOP_TIMEOUT) -> None:
        await asyncio.to_thread(self.stop, timeout)

    async def akill(self) -> None:
        await asyncio.to_thread(self.kill)

    # -- commands --

    def command(self, *args: str, timeout: float = 2.0) -> str:
        """One command over a raw socket; the reply as text (see :func:`redis_command`)."""
        return redis_command(self._port, *args, timeout=timeout)

    def ping(self) -> bool:
        """Whether the server answers PING right now."""
        return _answers_ping(self._port)

    def cli(self, *args: str, timeout: float = 10.0) -> str:
        """Run ``redis-cli -h 127.0.0.1 -p PORT ARGS...``; its stdout less one final
        newline. A non-zero exit raises :class:`ServiceError`."""
        done = subprocess.run([REDIS_CLI_BIN, "-h", HOST, "-p", str(self._port), *args],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                              check=False)
        out = done.stdout.decode(errors="replace")
        if done.returncode != 0:
            raise ServiceError(f"redis-cli {' '.join(args)} exited with {done.returncode}: "
                               f"{out}{done.stderr.decode(errors='replace')}")
        return out[:-1] if out.endswith("\n") else out

    def flushall(self) -> None:
        self.command("FLUSHALL")

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisServer {self.url} {'running' if self.running else 'stopped'}>"


class RedisCluster:
    """A Redis Cluster of ``masters`` (default 3) ``redis-server`` masters, no replicas, on
    free ports: nodes started with ``--cluster-enabled yes``, joined by
    ``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes``, ready when every
    node's ``CLUSTER INFO`` says ``cluster_state:ok`` and knows every other node.
    """

    def __init__(self, masters: int = 3, *extra_args: str, node_timeout_ms: int = 5000,
                 start_timeout: float = CLUSTER_TIMEOUT) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.dir: Path = _make_tmp_dir("sb-redis-cluster-")
        self.start_timeout = start_timeout
        self.nodes: list[RedisServer] = []
        for i in range(masters):
            node_dir = self.dir / f"node{i}"
            node_dir.mkdir()
            self.nodes.append(RedisServer(*extra_args, directory=node_dir,
                                          cluster_node_timeout_ms=node_timeout_ms))

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """The first master's URL, a seed for cluster-aware clients."""
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> RedisCluster:
        """Start every node, create the cluster, wait until it is ``ok`` on every node."""
        try:
            for node in self.nodes:
                node.start()
            self._create()
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self) -> None:
        args = [f"{HOST}:{port}" for port in self.ports]
        try:
            self.nodes[0].cli("--cluster", "create", *args, "--cluster-replicas", "0",
                              "--cluster-yes", timeout=self.start_timeout)
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"redis-cli --cluster create took over {self.start_timeout} s"
                               ) from exc

    def info(self, node: int = 0) -> dict[str, str]:
        """``CLUSTER INFO`` of one node as a dict."""
        text = self.nodes[node].command("CLUSTER", "INFO")
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def wait_ok(self, timeout: float | None = None) -> None:
        """Wait (bounded) until every node reports ``cluster_state:ok`` and knows all nodes."""
        limit = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        want = str(len(self.nodes))
        while True:
            infos = []
            for i in range(len(self.nodes)):
                try:
                    infos.append(self.info(i))
                except (OSError, ServiceError):
                    infos.append({})
            if all(i.get("cluster_state") == "ok" and i.get("cluster_known_nodes") == want
                   and i.get("cluster_size") == want for i in infos):
                return
            if time.monotonic() > deadline:
                raise ServiceError(f"cluster not ok on every node within {limit} s: {infos}")
            time.sleep(POLL_INTERVAL * 5)

    def flushall(self) -> None:
        """FLUSHALL on every master."""
        for node in self.nodes:
            node.flushall()

    def stop(self) -> None:
        """Stop every node (each SIGTERM, then wait)."""
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        """Stop every node and remove the temporary directory."""
        self.stop()
        _remove_tmp_dir(self.dir)

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisCluster {self.ports}>"


# ---------------------------------------------------------------------------------------------
# nginx

#: An nginx.conf template for :class:`NginxServer`: one worker, every path under the
#: temporary prefix, no access log, round-robin HTTP and WebSocket proxying to the upstreams.
#: Placeholders are replaced literally (nginx's own braces stay as they are):
#: ``{listen_port}``, ``{upstreams}`` (one ``server HOST:PORT;`` line per upstream) and
#: ``{tmp}`` (the absolute prefix directory). A template must not set ``daemon``, ``pid`` or
#: ``user``: the command line does.
NGINX_PROXY_TEMPLATE = """\
worker_processes 1;
events {
    worker_connections 1024;
}
http {
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    map $http_upgrade $connection_upgrade {
        default upgrade;
        ''      close;
    }
    upstream switchboard {
        {upstreams}
    }
    server {
        listen 127.0.0.1:{listen_port};
        location / {
            proxy_pass http://switchboard;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }
    }
}
"""


class NginxServer(_Service):
    """``/usr/sbin/nginx`` as the current user on a free 127.0.0.1 port, its prefix, config,
    pid file and temp paths in a temporary directory, in the foreground::

        nginx -p TMP -c nginx.conf -e stderr -g 'daemon off; pid TMP/nginx.pid; error_log stderr;'

    (plus ``user root;`` when running as root, so the workers can use the 0700 prefix). The
    config is ``template`` with ``{listen_port}``, ``{upstreams}`` and ``{tmp}`` replaced (see
    :data:`NGINX_PROXY_TEMPLATE`, the default). Ready when the port accepts connections.
    """

    _log_name = "nginx.log"

    def __init__(self, upstreams: Sequence[str], template: str = NGINX_PROXY_TEMPLATE, *,
                 start_timeout: float = START_TIMEOUT) -> None:
        if "{listen_port}" not in template:
            raise ValueError("the nginx template has no {listen_port} placeholder")
        self.upstreams: list[str] = list(upstreams)
        self.template = template
        self.start_timeout = start_timeout
        self.dir = _make_tmp_dir("sb-nginx-")
        self._port = free_port()
        self._proc = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self._port}"

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:PORT``."""
        return f"ws://{HOST}:{self._port}"

    @property
    def config_path(self) -> Path:
        return self.dir / "nginx.conf"

    def render(self) -> str:
        """The config text for the current port and upstreams."""
        servers = "\n        ".join(f"server {u};" for u in self.upstreams)
        return (self.template.replace("{listen_port}", str(self._port))
                .replace("{upstreams}", servers)
                .replace("{tmp}", str(self.dir)))

    def argv(self) -> list[str]:
        directives = f"daemon off; pid {self.dir}/nginx.pid; error_log stderr;"
        if os.geteuid() == 0:
            directives += " user root;"
        return [NGINX_BIN, "-p", f"{self.dir}/", "-c", "nginx.conf", "-e", "stderr",
                "-g", directives]

    def start(self) -> NginxServer:
        """Write the config, start nginx, wait until its port accepts (retries on another
        port when the picked one was taken meanwhile)."""
        if self.running:
            return self
        for attempt in range(BIND_ATTEMPTS):
            self.config_path.write_text(self.render())
            marker = self.log_path.stat().st_size if self.log_path.exists() else 0
            proc = _spawn(self.argv(), cwd=self.dir, log=self.log_path)
            self._proc = proc
            try:
                wait_for_port(self._port, timeout=self.start_timeout, proc=proc)
                return self
            except ServiceError as exc:
                _terminate(proc, signal.SIGKILL)
                self._proc = None
                text = self.log_path.read_bytes()[marker:].decode(errors="replace")
                if "Address already in use" in text and attempt + 1 < BIND_ATTEMPTS:
                    self._port = free_port()
                    continue
                raise ServiceError(f"nginx: {exc}:\n{text}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<NginxServer {self.url} -> {self.upstreams}>"


# ---------------------------------------------------------------------------------------------
# pytest fixtures


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis for the whole session; a test that needs an empty db flushes it (or uses
    ``redis_url``)."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session Redis, FLUSHALLed (restarted first if a test stopped it), as a URL."""
    if not redis_server.running:
        redis_server.start()
    redis_server.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """One 3-master Redis Cluster for the whole session."""
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster) -> str:
    """The session cluster with every master FLUSHALLed; the URL of a seed node."""
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, running; stop, kill and start it at will (same port)."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
