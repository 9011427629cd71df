"""``switchboard token``: the real command in a subprocess prints a token signed with the
configured key, which the server accepts; bad input exits non-zero with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from server.auth import parse_ttl
from tests.conftest import SECRET, connector

ROOT = Path(__file__).resolve().parent.parent


def run_token(tmp_path: Path, *args: str, config: str = "",
              secret: str | None = SECRET) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "websocket.yaml"
    path.write_text(config)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WS_") and k not in ("JWT_SECRET", "SWITCHBOARD_CONFIG")}
    env["PYTHONPATH"] = str(ROOT)
    if secret is not None:
        env["JWT_SECRET"] = secret
    return subprocess.run([sys.executable, "-m", "server", "token", "-c", str(path), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30,
                          check=False)


def write_pem(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, *, private: bool) -> str:
    if private:
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    else:
        data = key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    path.write_bytes(data)
    return str(path)


async def test_hs256_token_carries_the_claims_and_connects(tmp_path: Path, make_server: object) -> None:
    before = int(time.time())
    done = run_token(tmp_path, "--sub", "u1", "--username", "alice", "--roles", "admin",
                     "--roles", "ops,dev", "--ttl", "1h")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert done.stdout == token + "\n"  # nothing else on stdout
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "u1" and claims["username"] == "alice"
    assert claims["roles"] == ["admin", "ops", "dev"] and claims["jti"]
    assert claims["exp"] - claims["iat"] == 3600 and before <= claims["iat"] <= time.time()
    client = await make_server()  # the tests' server is configured with the same SECRET
    ws = await connector(client)(token=token)
    assert ws.connected is not None and ws.connected["data"]["user"] == {"id": "u1", "username": "alice"}


def test_aud_iss_from_config_and_ttl_units(tmp_path: Path) -> None:
    done = run_token(tmp_path, "--sub", "u2", "--ttl", "15m",
                     config="auth:\n  audience: sb\n  issuer: https://id.example\n")
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), SECRET, algorithms=["HS256"], audience="sb",
                        issuer="https://id.example")
    assert claims["exp"] - claims["iat"] == 900 and "roles" not in claims and "username" not in claims


@pytest.mark.parametrize(("ttl", "message"), [
    ("soon", "not a duration: 'soon'"),
    ("-5m", "at least one second"),
])
def test_bad_ttl_exits_non_zero_with_a_clear_message(tmp_path: Path, ttl: str, message: str) -> None:
    done = run_token(tmp_path, "--sub", "u1", f"--ttl={ttl}")
    assert done.returncode != 0 and done.stdout == ""
    assert "switchboard token: --ttl: " in done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1.5h", 5400),
                                               ("7D", 604800), (" 2h ", 7200)])
def test_ttl_units(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1hr", "0", "0.5", "-1", "inf", "nan", "1e400d"])
def test_ttl_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration|at least one second"):
        parse_ttl(text)


def test_rs256_with_private_key(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = write_pem(tmp_path / "pub.pem", key, private=False)
    private = write_pem(tmp_path / "key.pem", key, private=True)
    config = f"auth:\n  algorithm: RS256\n  public_key_file: {public}\n"
    done = run_token(tmp_path, "--sub", "u3", "--roles", "service", "--ttl", "90",
                     "--private-key", private, config=config)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(token, key.public_key(), algorithms=["RS256"])
    assert claims["sub"] == "u3" and claims["roles"] == ["service"] and claims["exp"] - claims["iat"] == 90
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(token, SECRET, algorithms=["HS256"])


def test_rs256_refuses_a_key_that_is_not_the_configured_pair(tmp_path: Path) -> None:
    configured = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = write_pem(tmp_path / "pub.pem", configured, private=False)
    private = write_pem(tmp_path / "other.pem", other, private=True)
    config = f"auth:\n  algorithm: RS256\n  public_key_file: {public}\n"
    done = run_token(tmp_path, "--sub", "u3", "--private-key", private, config=config)
    assert done.returncode != 0 and done.stdout == ""
    assert "would be refused by this config" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("args", "message"), [
    ((), "RS256 tokens need a private key (--private-key FILE)"),
    (("--private-key", "missing.pem"), "--private-key: cannot read missing.pem"),
    (("--private-key", "garbage.pem"), "cannot sign a RS256 token with that key"),
])
def test_rs256_private_key_problems(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    (tmp_path / "garbage.pem").write_text("not a key\n")
    config = f"auth:\n  algorithm: RS256\n  public_key_file: {tmp_path / 'pub.pem'}\n"
    done = run_token(tmp_path, "--sub", "u1", *args, config=config)
    assert done.returncode != 0 and done.stdout == ""
    assert message in done.stderr and "Traceback" not in done.stderr


def test_hs256_refuses_a_private_key(tmp_path: Path) -> None:
    private = write_pem(tmp_path / "key.pem", ec.generate_private_key(ec.SECP256R1()), private=True)
    done = run_token(tmp_path, "--sub", "u1", "--private-key", private)
    assert done.returncode != 0 and "signed with auth.secret (JWT_SECRET)" in done.stderr


def test_development_secret_is_warned_about_on_stderr(tmp_path: Path) -> None:
    done = run_token(tmp_path, "--sub", "u1", secret=None)
    assert done.returncode == 0
    assert jwt.decode(done.stdout.strip(), "switchboard-dev-secret-change-me", algorithms=["HS256"])
    assert "development default secret" in done.stderr
