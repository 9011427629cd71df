"""``switchboard bench``: its options, and the command: it checks them, raises the open-files
limit, starts the baseline server when asked, runs the tests (``bench.py``) and reports
(``bench_report.py``).

``server/cli.py`` registers :func:`add_parser`, loads the config and calls :func:`run` with the
URL and a token minter; the bench machinery is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
from dataclasses import replace
from typing import Any

import orjson

from .bench_model import Params
from .bench_suite_names import SCENARIOS
from .options import Minter, token_options


def add_parser(sub: Any, default_config: str) -> argparse.ArgumentParser:
    bench: argparse.ArgumentParser = sub.add_parser(
        "bench", help="load-test a server: connection storm, throughput, fan-out, sustained load",
        description="Opens real WebSocket connections (tokens minted with the configured key), "
                    "sends room messages and times each delivery. Prints a results table "
                    "(and --json FILE). Exit status 1 when a message was lost or the errors "
                    "exceed --max-errors, 2 for bad options. Run it against a server whose "
                    "rate limits and connection caps allow the load (docs/benchmarks.md).")
    bench.add_argument("--test-type", choices=("storm", "throughput", "fanout", "sustained", "all"),
                       default="all", help="which test (default: all, one after the other)")
    bench.add_argument("--url", help="ws://host:port/ws (default: the configured listen address)")
    bench.add_argument("--baseline", action="store_true",
                       help="start the minimal raw aiohttp server (server/tools/bench_baseline.py) on a "
                            "free loopback port and test it instead of --url")
    bench.add_argument("--connections", type=int, default=100, help="connections (default 100)")
    bench.add_argument("--messages", type=int, default=10,
                       help="messages per sender in throughput and fanout (default 10)")
    bench.add_argument("--duration", type=float, default=60.0, help="seconds of the sustained test (default 60)")
    bench.add_argument("--max-concurrent", type=int, default=50,
                       help="connection handshakes in flight at once (default 50)")
    bench.add_argument("--message-interval", type=float, default=100.0, metavar="MS",
                       help="ms between a sender's messages in fanout and sustained (default 100)")
    bench.add_argument("--rooms", type=int, default=1, help="rooms the connections are spread over (default 1)")
    bench.add_argument("--payload-bytes", type=int, default=64, help="size of each message's content (default 64)")
    bench.add_argument("--drain-timeout", type=float, default=5.0, metavar="SECONDS",
                       help="after sending, wait this long without a delivery before counting "
                            "the rest as lost (default 5)")
    bench.add_argument("--max-errors", type=int, default=0,
                       help="failures (refused connections, error frames, closes) tolerated (default 0)")
    bench.add_argument("--server-pid", type=int, help="process to sample RSS from (default: the "
                       "process listening on the URL's port, when it is on this machine)")
    bench.add_argument("--strict", action="store_true",
                       help="exit 1 when a test was saturated (a CPU-bound server or load "
                            "generator, or deliveries queued), not only on loss or failures")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-': stdout)")
    bench.add_argument("--no-progress", action="store_true", help="no live progress bar")
    suite = bench.add_argument_group(
        "suite", "--suite runs every scenario of docs/benchmarks.md against servers it starts "
                 "itself (Switchboard and the raw aiohttp reference, alternating) and exits 1 "
                 "when a target falls short; --url and the test options above do not apply")
    suite.add_argument("--suite", action="store_true", help="run the benchmark suite")
    suite.add_argument("--rounds", type=int, default=3, help="rounds of every scenario (default 3)")
    suite.add_argument("--only", action="append", metavar="NAME[,NAME]",
                       help="only these scenarios (repeatable): " + ", ".join(SCENARIOS))
    suite.add_argument("--quick", action="store_true",
                       help="tiny sizes: shows that every scenario works, measures nothing")
    suite.add_argument("--no-pin", action="store_true",
                       help="do not pin the servers and the generator to separate cores")
    suite.add_argument("--event-loop", choices=("asyncio", "uvloop"),
                       help="the event loop of both servers (default: server.event_loop's "
                            "default, asyncio)")
    token_options(bench, default_config)
    return bench


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _start_baseline() -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.tools.bench_baseline", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    if not line:
        raise RuntimeError("the baseline server did not start")
    return proc, orjson.loads(line)["url"]


async def _main(args: argparse.Namespace, params: Params, mint: Minter) -> int:
    from .bench import TESTS, Bench, Progress
    from .bench_meter import listener_pid
    from .bench_report import render, summary

    baseline = None
    if args.baseline:
        baseline, url = await _start_baseline()
        params = replace(params, url=url)
    try:
        pid = args.server_pid or (baseline.pid if baseline else listener_pid(params.url))
        names = TESTS if args.test_type == "all" else (args.test_type,)
        show = not args.no_progress and sys.stderr.isatty()
        bench = Bench(params, mint, Progress(show), pid)
        results = []
        with bench.progress:
            for name in names:
                results.append(await bench.run(name))
    finally:
        if baseline is not None and baseline.returncode is None:
            baseline.send_signal(signal.SIGTERM)
            await baseline.wait()
    report = summary(params, results, target="baseline" if args.baseline else "switchboard",
                     strict=args.strict)
    render(report, json_path=args.json)
    return int(report["exit_status"])


def _suite(args: argparse.Namespace) -> int:
    from .bench_suite import Suite
    from .bench_suite_report import render, report

    only = [n.strip() for part in args.only or () for n in part.split(",") if n.strip()]
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown or args.rounds < 1:
        print(f"switchboard bench: unknown scenario {', '.join(unknown)} (known: {', '.join(SCENARIOS)})"
              if unknown else f"switchboard bench: --rounds must be at least 1, got {args.rounds}",
              file=sys.stderr)
        return 2

    def log(line: str) -> None:
        if not args.no_progress:
            print(line, file=sys.stderr, flush=True)

    suite = Suite(rounds=args.rounds, quick=args.quick, only=only or None, pin=not args.no_pin,
                  event_loop=args.event_loop, log=log)
    outcomes = asyncio.run(suite.run())
    rep = report(outcomes, rounds=args.rounds, quick=args.quick,
                 pinned=suite.server_cores is not None, event_loop=suite.event_loop)
    render(rep, json_path=args.json)
    return int(rep["exit_status"])


def run(args: argparse.Namespace, url: str, mint: Minter) -> int:
    if args.suite:
        _raise_fd_limit()
        try:
            return _suite(args)
        except KeyboardInterrupt:
            return 130
    try:
        params = Params.from_args(args, url)
    except ValueError as exc:
        print(f"switchboard bench: {exc}", file=sys.stderr)
        return 2
    _raise_fd_limit()
    try:
        return asyncio.run(_main(args, params, mint))
    except KeyboardInterrupt:
        return 130

