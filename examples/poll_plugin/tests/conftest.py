"""The poll plugin's tests run on server.testing's fixtures: a real server on a free port with
the plugins below enabled, and real WebSocket clients (docs/plugins.md, "Testing a plugin")."""

import pytest

pytest_plugins = ["server.testing"]


@pytest.fixture
def switchboard_plugins() -> list[str]:
    """The poll plugin by its entry-point name, which also proves the packaging."""
    return ["chat", "poll"]
