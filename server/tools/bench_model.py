"""What ``switchboard bench`` measures: the parameters of a run (checked from the options) and
the results of one test, shared by the tests (``bench.py``), the server meter
(``bench_meter.py``) and the report (``bench_report.py``)."""

from __future__ import annotations

import argparse
from array import array
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Params:
    url: str
    connections: int
    messages: int
    duration: float
    max_concurrent: int
    interval: float  # seconds
    rooms: int
    payload_bytes: int
    drain_timeout: float
    max_errors: int

    @classmethod
    def from_args(cls, args: argparse.Namespace, url: str) -> Params:
        checks = [("--connections", args.connections, 1), ("--messages", args.messages, 1),
                  ("--max-concurrent", args.max_concurrent, 1), ("--rooms", args.rooms, 1),
                  ("--payload-bytes", args.payload_bytes, 0), ("--max-errors", args.max_errors, 0)]
        for flag, value, low in checks:
            if value < low:
                raise ValueError(f"{flag} must be at least {low}, got {value}")
        for flag, value in (("--duration", args.duration), ("--drain-timeout", args.drain_timeout)):
            if not value > 0:
                raise ValueError(f"{flag} must be greater than 0, got {value}")
        if not args.message_interval >= 0:
            raise ValueError(f"--message-interval must be 0 or more, got {args.message_interval}")
        if args.message_interval == 0 and args.test_type in ("sustained", "all"):
            raise ValueError("--message-interval must be greater than 0 for the sustained test")
        if args.rooms > args.connections:
            raise ValueError(f"--rooms ({args.rooms}) cannot exceed --connections ({args.connections})")
        return cls(url, args.connections, args.messages, args.duration, args.max_concurrent,
                   args.message_interval / 1000, args.rooms, args.payload_bytes,
                   args.drain_timeout, args.max_errors)


class Results:
    """What one test measured."""

    def __init__(self, name: str, attempted: int) -> None:
        self.name = name
        self.attempted = attempted
        self.opened = 0
        self.connect_ms = array("d")
        self.connect_seconds = 0.0
        self.failures: Counter[str] = Counter()
        self.sent = 0
        self.acked = 0
        self.expected = 0
        self.delivered = 0
        self.latency_ms = array("d")
        #: deliveries still due per message key (negative: duplicates)
        self.due: dict[int, int] = {}
        self.first_send = 0
        self.last_send = 0
        self.last_delivery = 0
        self.elapsed = 0.0
        #: wall seconds of the measured phase (the handshakes of a storm, the sending and
        #: draining of the others), and the CPU seconds the generator and the server used in it
        self.phase = 0.0
        self.cpu = 0.0
        self.server_cpu: float | None = None
        self.rss: dict[str, float] | None = None
        self.server_pid: int | None = None
        #: seconds between one sender's messages (0: back to back, or no messages)
        self.interval = 0.0

    def deliver(self, key: int, sent_ns: int, now_ns: int) -> None:
        self.delivered += 1
        self.last_delivery = now_ns
        self.latency_ms.append((now_ns - sent_ns) / 1e6)
        due = self.due.get(key)
        if due is not None:
            self.due[key] = due - 1

    def refused(self, key: int, code: str) -> None:
        """The server answered a message with an error: its deliveries are not due."""
        self.failures[f"error {code}"] += 1
        due = self.due.pop(key, 0)
        self.expected -= max(due, 0)

    @property
    def lost(self) -> int:
        return sum(d for d in self.due.values() if d > 0)

    @property
    def duplicates(self) -> int:
        return -sum(d for d in self.due.values() if d < 0)
