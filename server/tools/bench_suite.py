"""``switchboard bench --suite``: every scenario of docs/benchmarks.md, Switchboard against the
raw aiohttp reference (``bench_baseline.py``) in the same run, alternating, ``--rounds`` times;
medians, the ratio of each round and a verdict against the targets (exit status 1 when one
falls short). Each run gets a fresh server process pinned to one core and the load generator
(this process) to another, when the machine has two.

A scenario is two *sides* measured in turn (Switchboard and its reference, or two
configurations of Switchboard) and the checks that compare them; ``bench_suite_report.py``
prints the table.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.schema import ServerConfig
from ..event_loop import chosen
from .bench import Bench, Progress
from .bench_meter import rss_mib
from .bench_model import Params, Results
from .bench_report import test_summary
from .bench_servers import Lab, Server, cores, merged
from .options import Minter

#: a side's measurement: what one run gives (``{"deliveries_per_s": ..., ...}``)
Metrics = dict[str, float | None]


@dataclass(frozen=True)
class Side:
    label: str
    #: ``"switchboard"`` or ``"baseline"``
    kind: str
    config: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    redis: bool = False


@dataclass(frozen=True)
class Check:
    """``metric`` of the subject over the reference's (``ratio``), or of the subject alone
    (``absolute``), against ``limit`` in the direction of ``op`` (``>=`` or ``<=``)."""
    metric: str
    op: str
    limit: float
    kind: str = "ratio"

    def holds(self, value: float | None) -> bool:
        if value is None:
            return False
        return {">=": value >= self.limit, "<=": value <= self.limit, "<": value < self.limit,
                ">": value > self.limit}[self.op]

    def describe(self) -> str:
        what = "ratio" if self.kind == "ratio" else "value"
        return f"{self.metric} {what} {self.op} {self.limit:g}"


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    subject: Side
    reference: Side | None
    #: measures one side: ``(run context) -> metrics``
    measure: Callable[[Run], Awaitable[Metrics]]
    checks: tuple[Check, ...]
    redis: bool = False


@dataclass
class Run:
    """What a measurement gets: the server it runs against and how to load it."""
    suite: Suite
    server: Server
    side: Side

    def bench(self, params: Params, pid: int | None = -1) -> Bench:
        return Bench(params, self.suite.mint, Progress(False), self.server.pid if pid == -1 else pid)

    def params(self, **fields: Any) -> Params:
        base: dict[str, Any] = {"url": self.server.url, "connections": 100, "messages": 10,
                                "duration": 1.0, "max_concurrent": 50, "interval": 0.0, "rooms": 1,
                                "payload_bytes": 64, "drain_timeout": 5.0, "max_errors": 0}
        base.update(fields)
        return Params(**base)


def _clean(res: Results) -> dict[str, Any]:
    """The test's summary; a run that lost a delivery or failed a connection is no figure."""
    t = test_summary(res)
    lost = (t["deliveries"] or {}).get("lost", 0)
    if lost or t["failures"]:
        raise RuntimeError(f"{res.name}: {lost} deliveries lost, failures {t['failures']}")
    return t


# --- the measurements ------------------------------------------------------------------------
def _fanout(connections: int, messages: int, interval_ms: float) -> Callable[[Run], Awaitable[Metrics]]:
    async def measure(run: Run) -> Metrics:
        res = await run.bench(run.params(connections=connections, messages=messages,
                                         interval=interval_ms / 1000)).run("fanout")
        t = _clean(res)
        # the server's CPU is read from its process: with --workers, the supervisor's (none)
        server_us = t["cpu_us_per_delivery"]["server"] if run.side.workers == 1 else None
        return {"deliveries_per_s": t["deliveries"]["per_second"],
                "server_us_per_delivery": server_us,
                "latency_p50_ms": t["latency_ms"]["p50"], "latency_p99_ms": t["latency_ms"]["p99"]}
    return measure


def _pipeline(connections: int, rooms: int, messages: int) -> Callable[[Run], Awaitable[Metrics]]:
    async def measure(run: Run) -> Metrics:
        res = await run.bench(run.params(connections=connections, rooms=rooms,
                                         messages=messages)).run("throughput")
        t = _clean(res)
        return {"server_us_per_message": t["cpu_us_per_delivery"]["server"],
                "messages_per_s": t["messages"]["per_second"]}
    return measure


def _storm(connections: int) -> Callable[[Run], Awaitable[Metrics]]:
    async def measure(run: Run) -> Metrics:
        res = await run.bench(run.params(connections=connections)).run("storm")
        t = _clean(res)
        return {"connections_per_s": t["connections"]["per_second"],
                "handshake_p99_ms": t["connections"]["latency_ms"]["p99"],
                "server_us_per_connection": round(res.server_cpu * 1e6 / res.opened, 1)
                if res.server_cpu is not None else None}
    return measure


def _idle(connections: int) -> Callable[[Run], Awaitable[Metrics]]:
    async def measure(run: Run) -> Metrics:
        bench = run.bench(run.params(connections=connections, max_concurrent=100))
        res = Results("idle", connections)
        before = rss_mib(run.server.pid)
        conns = await bench.open_all(res, rooms=False)
        try:
            if res.failures:
                raise RuntimeError(f"idle: failures {dict(res.failures)}")
            async with asyncio.timeout(30):  # every handshake's work is done once each pongs
                await asyncio.gather(*(c.sync() for c in conns))
            after = rss_mib(run.server.pid)
        finally:
            await bench.close_all(conns)
        if before is None or after is None:
            raise RuntimeError("idle: the server's RSS cannot be read")
        return {"kib_per_connection": round((after - before) * 1024 / len(conns), 2),
                "rss_mib": round(after, 1)}
    return measure


def _churn(users: int, wave: int, settle: float) -> Callable[[Run], Awaitable[Metrics]]:
    """``users`` distinct users in waves of ``wave``, each connecting into a room of two,
    sending and leaving; twice (the first set brings the server to its working size), RSS
    measured once the records of each set have expired."""
    async def one_set(run: Run) -> None:
        for _ in range(max(1, users // wave)):
            res = await run.bench(run.params(connections=wave, rooms=max(1, wave // 2),
                                             messages=2)).run("throughput")
            _clean(res)

    async def measure(run: Run) -> Metrics:
        await one_set(run)
        await asyncio.sleep(settle)  # the TTLs of the config below, and a sweep
        before = rss_mib(run.server.pid)
        await one_set(run)
        await asyncio.sleep(settle)
        after = rss_mib(run.server.pid)
        if before is None or after is None:
            raise RuntimeError("churn: the server's RSS cannot be read")
        return {"rss_before_mib": before, "rss_after_mib": after,
                "rss_growth": round(after / before, 3)}
    return measure


# --- the scenarios ---------------------------------------------------------------------------
SWITCHBOARD = Side("switchboard", "switchboard")
BASELINE = Side("raw aiohttp", "baseline")
CHURN_TTL = 3.0


def scenarios(quick: bool) -> list[Scenario]:
    """Every scenario, at full size or (``quick``) at the size of a test that only shows it works."""
    def n(full: int, small: int) -> int:
        return small if quick else full

    default_room = Side("switchboard, default room", "switchboard",
                        {"rooms": {"default_rooms": ["general"]}})
    expiring = Side("switchboard, short TTLs", "switchboard", {
        "rooms": {"history_ttl": CHURN_TTL}, "presence": {"grace_period": 0.5,
                                                          "last_seen_ttl": CHURN_TTL},
        "notifications": {"ttl": CHURN_TTL}, "backend": {"sweep_interval": 1.0}})
    redis_one = Side("switchboard, redis", "switchboard", redis=True)
    redis_two = Side("switchboard, redis, --workers 2", "switchboard", workers=2, redis=True)
    return [
        Scenario("fanout", f"room fan-out: 1 sender, {n(1000, 20) - 1} subscribers, "
                 f"{n(100, 5)} messages back to back", SWITCHBOARD, BASELINE,
                 _fanout(n(1000, 20), n(100, 5), 0), (Check("deliveries_per_s", ">=", 1.25),)),
        Scenario("latency", f"latency: {n(1000, 20)} subscribers, 50 messages/s for {n(250, 10)} messages",
                 SWITCHBOARD, BASELINE, _fanout(n(1000, 20), n(250, 10), 20),
                 (Check("latency_p99_ms", "<=", 1.2),
                  Check("latency_p99_ms", "<", 30, kind="absolute"))),
        Scenario("pipeline", f"inbound pipeline: {n(200, 20)} clients in rooms of 2, "
                 f"{n(100, 100)} messages each, server CPU per message with its ack and delivery",
                 # quick: enough messages for the server's CPU time (10 ms ticks) to be seen
                 SWITCHBOARD, BASELINE, _pipeline(n(200, 20), n(100, 10), n(100, 100)),
                 (Check("server_us_per_message", "<=", 1.5),)),
        Scenario("storm", f"connect storm: {n(5000, 50)} connections, 50 handshakes at once",
                 SWITCHBOARD, BASELINE, _storm(n(5000, 50)),
                 (Check("connections_per_s", ">=", 0.85), Check("handshake_p99_ms", "<=", 1.5))),
        Scenario("room-storm", f"storm of {n(5000, 50)} distinct users into one default room "
                 "(join events on) against the same storm without rooms",
                 default_room, SWITCHBOARD, _storm(n(5000, 50)),
                 (Check("connections_per_s", ">=", 0.7),)),
        Scenario("idle-memory", f"idle memory: {n(10000, 100)} connections, RSS per connection",
                 SWITCHBOARD, BASELINE, _idle(n(10000, 100)),
                 (Check("kib_per_connection", "<=", 1.2),)),
        Scenario("churn", f"memory after churn: {n(10000, 40)} distinct users in waves of "
                 f"{n(1000, 20)} connect, send and leave; RSS once their records expired, "
                 "against before them", expiring, None,
                 _churn(n(10000, 40), n(1000, 20), CHURN_TTL + 2.5),
                 (Check("rss_growth", "<=", 1.10, kind="absolute"),)),
        Scenario("redis-workers", f"Redis backend: room fan-out ({n(1000, 20)} members, "
                 f"{n(100, 5)} messages) with --workers 2 against one process",
                 redis_two, redis_one, _fanout(n(1000, 20), n(100, 5), 0),
                 (Check("deliveries_per_s", ">=", 1.7),), redis=True),
    ]



# --- running ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    scenario: Scenario
    subject: list[Metrics] = field(default_factory=list)
    reference: list[Metrics] = field(default_factory=list)
    error: str | None = None


class Suite:
    def __init__(self, *, rounds: int, quick: bool, only: list[str] | None, pin: bool,
                 event_loop: str | None, log: Callable[[str], None]) -> None:
        self.rounds, self.pin, self.log = rounds, pin, log
        # both sides on the same loop: Switchboard's default (server.event_loop), unless told
        self.event_loop = event_loop or chosen(ServerConfig.model_fields["event_loop"].default)
        self.scenarios = [s for s in scenarios(quick) if not only or s.name in only]
        self.workdir = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
        self.lab = Lab(self.workdir)
        self.mint: Minter = self._minter()
        all_cores = self.all_cores = cores()  # before this process pins itself
        self.server_cores: set[int] | None = None
        if pin and len(all_cores) >= 2:
            self.server_cores = {all_cores[0]}
            self.generator_cores: set[int] = {all_cores[1]}
            os.sched_setaffinity(0, self.generator_cores)
        self.redis_url: str | None = None

    def _minter(self) -> Minter:
        from ..auth import mint_token
        from ..config.schema import AuthConfig

        auth = AuthConfig(secret=self.lab.secret)

        def mint(sub: str, **claims: Any) -> str:
            return mint_token(auth, sub=sub, ttl=3600, **claims)
        return mint

    def _server(self, side: Side) -> AbstractAsyncContextManager[Server]:
        if side.kind == "baseline":
            return self.lab.baseline(pin=self.server_cores, event_loop=self.event_loop)
        extra = merged(side.config, {"server": {"event_loop": self.event_loop}})
        if side.redis:
            assert self.redis_url is not None
            extra = merged(extra, {"backend": {"type": "redis", "redis": {"url": self.redis_url}}})
        pin = self.server_cores
        if side.workers > 1:
            pin = set(self.all_cores)  # a worker per core
        return self.lab.switchboard(extra, pin=pin, workers=side.workers)

    async def _measure(self, scenario: Scenario, side: Side) -> Metrics:
        gc.collect()
        async with self._server(side) as server:
            metrics = await scenario.measure(Run(self, server, side))
        self.log(f"  {scenario.name} / {side.label}: "
                 + ", ".join(f"{k} {v:g}" for k, v in metrics.items() if v is not None))
        return metrics

    async def run(self) -> list[Outcome]:
        outcomes = [Outcome(s) for s in self.scenarios]
        needs_redis = any(s.redis for s in self.scenarios)
        redis_cm = self.lab.redis() if needs_redis else None
        try:
            if redis_cm is not None:
                try:
                    self.redis_url = await redis_cm.__aenter__()
                except (FileNotFoundError, RuntimeError) as exc:
                    redis_cm = None
                    for o in outcomes:
                        if o.scenario.redis:
                            o.error = f"not run: {exc}"
            for r in range(self.rounds):
                self.log(f"round {r + 1} of {self.rounds}")
                for o in outcomes:
                    if o.error:
                        continue
                    s = o.scenario
                    # alternate which side goes first, round after round
                    sides = [("subject", s.subject), ("reference", s.reference)]
                    if r % 2:
                        sides.reverse()
                    try:
                        for which, side in sides:
                            if side is not None:
                                getattr(o, which).append(await self._measure(s, side))
                    except (RuntimeError, OSError, TimeoutError) as exc:
                        o.error = f"{type(exc).__name__}: {exc}"
                        self.log(f"  {s.name}: {o.error}")
        finally:
            if redis_cm is not None:
                await redis_cm.__aexit__(None, None, None)
        return outcomes


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def verdicts(o: Outcome) -> list[tuple[Check, float | None, bool]]:
    """Each check of a scenario: the median of its rounds' figures (ratios: of each round's
    subject over the same round's reference) and whether it holds."""
    out = []
    for check in o.scenario.checks:
        if o.error:
            out.append((check, None, False))
            continue
        if check.kind == "absolute":
            value = median([m.get(check.metric) for m in o.subject])
        else:
            ratios: list[float | None] = []
            for a, b in zip(o.subject, o.reference):
                x, y = a.get(check.metric), b.get(check.metric)
                ratios.append(x / y if x is not None and y else None)
            value = median(ratios)
        out.append((check, value, check.holds(value)))
    return out
