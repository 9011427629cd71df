"""The names of the scenarios of ``switchboard bench --suite`` (``bench_suite.py``), for the
command's options without importing the suite."""

SCENARIOS = ("fanout", "latency", "pipeline", "storm", "room-storm", "idle-memory", "churn",
             "redis-workers")
