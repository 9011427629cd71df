"""The ``backend`` fixture of the contract suites (tests/test_store.py,
tests/test_backend_history_inbox.py, tests/test_backend_contract.py): each test runs on every
backend ``create_backend`` builds, the Redis ones against real ``redis-server`` processes the
suite starts (tests/services.py): one Redis and a 3-master Redis Cluster."""

from __future__ import annotations

from typing import Any, AsyncIterator

import pytest

from server.backends import create_backend
from server.backends.base import Backend
from tests.conftest import make_config

BACKENDS = ["memory", "redis", "redis-cluster"]


def backend_config(kind: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    if kind == "memory":
        return {"backend": {"type": "memory"}}
    url = request.getfixturevalue("cluster_url" if kind == "redis-cluster" else "redis_url")
    return {"backend": {"type": "redis", "redis": {"url": url, "cluster": kind == "redis-cluster"}}}


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    made = create_backend(make_config(backend_config(request.param, request)), "node-1")

    def deliver(*_: Any) -> None:
        return None

    await made.start(deliver)
    try:
        yield made
    finally:
        await made.close()
