"""``switchboard check-config``, run for real in a subprocess (``python -m server``): exit codes
and what it prints, for valid files, every kind of invalid one, --strict and the environment."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {"JWT_SECRET": "s" * 48, "REDIS_URL": "redis://:hunter2@redis.internal:6379/0"}


def check(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run check-config with a clean environment: none of the caller's WS_ variables, secrets
    or SWITCHBOARD_CONFIG, plus ``env``."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("WS_") and k not in ("JWT_SECRET", "REDIS_URL", "SWITCHBOARD_CONFIG")}
    return subprocess.run([sys.executable, "-m", "server", "check-config", *args], cwd=cwd,
                          env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60)


def write(tmp_path: Path, text: str, name: str = "websocket.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def test_shipped_configs_pass_strict_with_a_summary() -> None:
    files = ["websocket.yaml", *sorted(f"config/{p.name}" for p in (ROOT / "config").glob("*.yaml"))]
    assert "config/production.yaml" in files and "config/development.yaml" in files
    result = check(*files, "--strict", env=SECRETS)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in files:
        assert f"{name}: valid\n" in result.stdout
    assert "warning" not in result.stdout and result.stderr == ""
    # the summary an operator reads before deploying, never a secret
    assert "  listen    127.0.0.1:8000/ws\n" in result.stdout
    assert "  auth      HS256 with a secret from JWT_SECRET, dev login ON\n" in result.stdout
    assert "  backend   redis at redis://***@redis.internal:6379/0\n" in result.stdout
    assert "  env       JWT_SECRET, REDIS_URL\n" in result.stdout
    assert SECRETS["JWT_SECRET"] not in result.stdout and "hunter2" not in result.stdout


def test_production_config_without_its_secrets_fails() -> None:
    result = check("config/production.yaml")
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "config/production.yaml: INVALID, 2 errors",
        "  error: auth.secret: is required for HS256: set the JWT_SECRET environment variable (or auth.secret)",
        "  error: backend.redis.url: is required: set the REDIS_URL environment variable (or backend.redis.url)",
    ]


def test_every_error_is_listed_with_its_key_path(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        server:
          ping_period: 30
          pong_wait: 20
        rate_limit:
          burst: -3
        security:
          ip_whitelist: [10.0.0.0/33]
        messages:
          filter: {patterns: ["(unclosed"]}
        backend: {type: mongo}
        ratelimit: {}
        """)
    result = check(path)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{path}: INVALID, 5 errors, 1 warning",
        "  error: server.pong_wait: must be greater than server.ping_period (30), got 20",
        "  error: security.ip_whitelist: not a valid IP address or CIDR: '10.0.0.0/33'",
        "  error: rate_limit.burst: must be a positive integer, got -3",
        "  error: messages.filter.patterns: invalid regular expression '(unclosed': missing ), "
        "unterminated subpattern at position 0",
        "  error: backend.type: must be one of 'memory' or 'redis', got 'mongo'",
        "  warning: ratelimit: unknown section (did you mean 'rate_limit'?)",
    ]


def test_plugin_problems_are_all_listed(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        plugins:
          enabled: [chat, nosuch, "os.path:join", chat]
          chatt: {x: 1}
        """)
    result = check(path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: INVALID, 3 errors, 1 warning"
    assert lines[1].startswith("  error: plugins.enabled: unknown plugin 'nosuch' (installed: ")
    assert lines[2].startswith("  error: plugin 'os.path:join': ")
    assert lines[3] == "  error: plugins.enabled: plugin 'chat' is listed twice"
    assert lines[4] == "  warning: plugins.chatt: options for a plugin that is not enabled (did you mean 'chat'?)"


def test_unknown_keys_warn_and_strict_makes_them_fatal(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        server:
          prot: 9000
        rate_limit:
          per_type:
            typing: {messages_per_minute: 60, burst: 10, bursts: 3}
        """)
    lenient = check(path)
    assert lenient.returncode == 0, lenient.stdout
    assert lenient.stdout.splitlines()[:3] == [
        f"{path}: valid, 2 warnings",
        "  warning: server.prot: unknown key (did you mean 'port'?)",
        "  warning: rate_limit.per_type.typing.bursts: unknown key (did you mean 'burst'?)",
    ]
    assert "  listen    127.0.0.1:8000/ws\n" in lenient.stdout
    assert "  auth      HS256 with THE DEVELOPMENT SECRET (set JWT_SECRET before going live)\n" \
        in lenient.stdout
    strict = check(path, "--strict")
    assert strict.returncode == 1
    assert strict.stdout.splitlines() == [
        f"{path}: INVALID, 2 warnings (fatal under --strict)",
        "  warning: server.prot: unknown key (did you mean 'port'?)",
        "  warning: rate_limit.per_type.typing.bursts: unknown key (did you mean 'burst'?)",
    ]


def test_unknown_keys_in_a_plugin_section_warn_and_fail_strict(tmp_path: Path) -> None:
    path = write(tmp_path, "plugins:\n  enabled: [chat]\n  chat: {bogus: 1}\n")
    lenient = check(path)
    assert lenient.returncode == 0, lenient.stdout
    assert lenient.stdout.splitlines()[:2] == [f"{path}: valid, 1 warning",
                                               "  warning: plugins.chat.bogus: unknown key"]
    strict = check(path, "--strict")
    assert strict.returncode == 1
    assert strict.stdout.splitlines() == [f"{path}: INVALID, 1 warning (fatal under --strict)",
                                          "  warning: plugins.chat.bogus: unknown key"]


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 8000\n host: 0.0.0.0\n")
    result = check(path)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{path}: INVALID, 1 error\n  error: {path}: YAML syntax error at "
                                    f"line 3, column 2: ")


def test_environment_overrides_and_their_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "rate_limit: {messages_per_minute: 60}\n")
    good = check(path, "--strict", env={"WS_RATE_LIMIT_MESSAGES_PER_MINUTE": "600"})
    assert good.returncode == 0, good.stdout
    assert "600 messages/min per connection" in good.stdout
    assert "  env       WS_RATE_LIMIT_MESSAGES_PER_MINUTE\n" in good.stdout
    bad = check(path, env={"WS_RATE_LIMIT_BURST": "-3", "WS_RATE_LIMIT_BRUST": "5"})
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == [
        f"{path}: INVALID, 1 error, 1 warning",
        "  error: rate_limit.burst: must be a positive integer, got -3 (from WS_RATE_LIMIT_BURST)",
        "  warning: WS_RATE_LIMIT_BRUST: environment variable matches no setting "
        "(did you mean WS_RATE_LIMIT_BURST?)",
    ]


def test_missing_file_and_no_file(tmp_path: Path) -> None:
    missing = check(str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1
    assert f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory" in missing.stdout
    none = check(cwd=tmp_path)
    assert none.returncode == 2
    assert "no FILE given" in none.stderr
    write(tmp_path, "server: {port: 9001}\n")
    default = check(cwd=tmp_path)  # ./websocket.yaml when no FILE is given
    assert default.returncode == 0 and "127.0.0.1:9001/ws" in default.stdout
