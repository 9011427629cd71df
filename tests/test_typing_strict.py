"""``mypy --strict`` on what plugin authors build on and copy: the plugin API, the test helpers
(server/testing.py), the built-in plugins and the example plugin with its tests. Run for real
in a subprocess.

Modules these import are followed silently (``--follow-imports=silent``): their types are used,
their own errors are not reported here, as for a plugin author whose mypy reads an installed
``server`` (PEP 561, server/py.typed). The cache lives in the environment (``.venv``) when it
is writable, so reruns take a second or two."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["server/plugin_api.py", "server/testing.py", "plugins",
         "examples/poll_plugin/switchboard_poll", "examples/poll_plugin/tests"]


def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mypy's cache: in the virtual environment running the tests, else in pytest's tmp."""
    if sys.prefix != sys.base_prefix and os.access(sys.prefix, os.W_OK):
        return Path(sys.prefix) / "mypy-cache-strict"
    return tmp_path_factory.mktemp("mypy-cache")


def test_plugin_api_testing_and_plugins_pass_mypy_strict(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    for path in PATHS:
        assert (ROOT / path).exists(), path
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
             "--cache-dir", str(cache_dir(tmp_path_factory)), *PATHS],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mypy did not finish within {exc.timeout}s:\n{exc.stdout}\n{exc.stderr}")
    output = result.stdout + result.stderr
    print(output)
    assert "No module named mypy" not in output, "mypy is in the test extra: pip install -e '.[test]'"
    assert result.returncode == 0 and "Success: no issues found" in result.stdout, output


def test_the_node_implements_the_plugin_api_facade(tmp_path_factory: pytest.TempPathFactory) -> None:
    """server/node.py returns a Node where a NodeAPI is expected (under TYPE_CHECKING): mypy
    fails there the day Node stops implementing what plugins are promised."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent",
         "--cache-dir", str(cache_dir(tmp_path_factory)), "server/node.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Success: no issues found" in result.stdout, output
