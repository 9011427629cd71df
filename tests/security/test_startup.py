"""What a production server refuses to start with: an HMAC secret shorter than RFC 7518 allows
(32 bytes for HS256), named with its key path and the variable it came from; a development
server only warns."""

from __future__ import annotations

import pytest

from server.config import load_config
from server.errors import ConfigError

PRODUCTION = {"server": {"environment": "production"}}


@pytest.mark.parametrize("algorithm, short, enough", [("HS256", 31, 32), ("HS384", 47, 48),
                                                      ("HS512", 63, 64)])
def test_a_short_hmac_secret_is_refused_in_production(algorithm: str, short: int,
                                                      enough: int) -> None:
    overrides = {**PRODUCTION, "auth": {"algorithm": algorithm}}
    with pytest.raises(ConfigError) as refused:
        load_config(None, env={"JWT_SECRET": "s" * short}, overrides=overrides)
    assert refused.value.errors == [
        f"auth.secret: {short} bytes is too short for {algorithm}, refused when "
        "server.environment is production: use at least "
        f"{enough} random bytes (RFC 7518, section 3.2) (from JWT_SECRET)"]
    assert load_config(None, env={"JWT_SECRET": "s" * enough}, overrides=overrides).config


def test_development_only_warns_about_a_short_secret() -> None:
    loaded = load_config(None, env={"JWT_SECRET": "short"})
    assert any(w.startswith("auth.secret: 5 bytes is too short") for w in loaded.warnings)
