"""Supply chain (docs/security.md): ``switchboard serve`` refuses to start on a dependency older
than its security fixes (``server/versions.py``), names the package, the minimum and why; the
floors are those of setup.cfg; this environment passes."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.versions import MINIMUMS, at_least, installed, problems

ROOT = Path(__file__).resolve().parents[2]
CURRENT = {"aiohttp": "3.14.5", "PyJWT": "2.13.0"}


def test_this_environment_passes() -> None:
    versions = installed()
    assert set(versions) == {"aiohttp", "PyJWT"}
    assert all(versions.values()), versions
    assert problems(versions) == []


@pytest.mark.parametrize(("package", "old"), [("aiohttp", "3.14.4"), ("aiohttp", "3.9.1"),
                                              ("PyJWT", "2.12.1"), ("PyJWT", "1.7.1")])
def test_a_too_old_release_is_named_with_its_minimum_and_why(package: str, old: str) -> None:
    found = problems({**CURRENT, package: old})
    assert len(found) == 1
    floor = next(m for m in MINIMUMS if m.package == package)
    assert found[0].startswith(f"{package} {old} is installed; {floor.version} or newer is required: ")
    assert "security advisories" in found[0]


def test_a_missing_package_is_a_problem_too() -> None:
    assert problems({"aiohttp": "3.14.5"}) == [
        f"PyJWT is not installed; 2.13 or newer is required: {MINIMUMS[1].why}"]


@pytest.mark.parametrize(("version", "ok"), [
    ("3.14.5", True), ("3.14.5.0", True), ("3.14.6", True), ("3.14.10", True), ("3.15", True),
    ("4.0.0", True), ("3.14.5.post1", True), ("3.14.5+deb12u1", True),
    ("3.14.5rc1", False), ("3.14.5.dev0", False), ("3.14.5b2", False), ("3.14.4", False),
    ("3.9.99", False), ("3", False), ("", False), ("unknown", False)])
def test_version_comparison(version: str, ok: bool) -> None:
    assert at_least(version, "3.14.5") is ok


def test_the_minimums_are_the_floors_of_setup_cfg() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    floors = {}
    for line in cfg["options"]["install_requires"].split("\n"):
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?>=(\S+)", line.strip())
        if match:
            floors[match.group(1)] = match.group(2)
    for floor in MINIMUMS:
        assert floors.get(floor.package) == floor.version, (floor, floors)


def test_serve_refuses_to_start_on_a_too_old_release(tmp_path: Path) -> None:
    """The real command, with a too-old aiohttp's metadata first on the path (the aiohttp
    package itself still imports from the environment): exit 2 before anything else runs."""
    dist = tmp_path / "aiohttp-3.9.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: aiohttp\nVersion: 3.9.1\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run([sys.executable, "-m", "server", "serve", "--port", "0"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "switchboard: cannot start: aiohttp 3.9.1 is installed; 3.14.5 or newer is required: " \
        in done.stderr
    assert "PyJWT" not in done.stderr  # the one that is recent enough is not named
