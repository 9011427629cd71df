"""JWT verification (PROTOCOL §1): HS256 by default, RS256/ES256 with a key file or a JWKS URL.

Algorithms come from config, never from the token. Tokens are never logged.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import structlog

from .config import AuthConfig
from .errors import AuthError
from .plugin_api import User

log = structlog.get_logger(__name__)


class Revocations:
    """Revoked token ids, each kept until the token would have expired anyway."""

    def __init__(self, static: list[str] | None = None) -> None:
        self._static = set(static or ())
        self._until: dict[str, float] = {}

    def revoke(self, jti: str, exp: float | None = None) -> None:
        self._until[jti] = exp if exp is not None else float("inf")

    def is_revoked(self, jti: str | None) -> bool:
        if not jti:
            return False
        if jti in self._static:
            return True
        until = self._until.get(jti)
        if until is None:
            return False
        if until < time.time():
            del self._until[jti]
            return False
        return True


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.revocations = Revocations(config.revoked_jtis)
        self._key: Any = None
        self._jwks: dict[str, Any] = {}
        self._jwks_fetched = 0.0
        self._jwks_lock = asyncio.Lock()
        if config.algorithm.startswith("HS"):
            self._key = config.secret
        elif config.public_key_file:
            try:
                self._key = Path(config.public_key_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise AuthError(f"auth.public_key_file: cannot read {config.public_key_file}: {exc.strerror}") from None

    async def _jwks_key(self, token: str) -> Any:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise AuthError(f"malformed token: {exc}") from None
        stale = time.monotonic() - self._jwks_fetched > self.config.jwks_cache_ttl
        if stale or kid not in self._jwks:
            async with self._jwks_lock:
                stale = time.monotonic() - self._jwks_fetched > self.config.jwks_cache_ttl
                # refetch on an unknown kid (key rotation), at most once a second
                if stale or (kid not in self._jwks and time.monotonic() - self._jwks_fetched > 1.0):
                    await self._fetch_jwks()
        if kid is None and len(self._jwks) == 1:
            return next(iter(self._jwks.values()))
        key = self._jwks.get(kid)
        if key is None:
            raise AuthError(f"no key with kid {kid!r} in the JWKS")
        return key

    async def _fetch_jwks(self) -> None:
        url = self.config.jwks_url
        assert url is not None
        try:
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(url) as resp:
                    resp.raise_for_status()
                    data = await resp.json(content_type=None)
            keyset = jwt.PyJWKSet.from_dict(data)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, jwt.PyJWTError) as exc:
            log.error("jwks_fetch_failed", url=url, error=str(exc))
            if not self._jwks:
                raise AuthError("cannot fetch the JWKS") from None
            return
        self._jwks = {k.key_id: k.key for k in keyset.keys}
        self._jwks_fetched = time.monotonic()

    async def verify(self, token: str) -> dict[str, Any]:
        """Return the claims of a valid token or raise AuthError with the reason."""
        if not token or not isinstance(token, str):
            raise AuthError("missing token")
        cfg = self.config
        key = self._key if not cfg.jwks_url else await self._jwks_key(token)
        required = ["sub"] + (["exp"] if cfg.require_exp else [])
        options: dict[str, Any] = {"require": required, "verify_aud": cfg.audience is not None}
        try:
            claims = jwt.decode(
                token, key, algorithms=[cfg.algorithm], audience=cfg.audience,
                issuer=cfg.issuer, leeway=cfg.leeway, options=options,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"missing claim {exc.claim!r}") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise AuthError("claim 'sub' must be a non-empty string")
        if self.revocations.is_revoked(claims.get("jti")):
            raise AuthError("token revoked")
        return claims


def user_from_claims(claims: dict[str, Any]) -> User:
    roles = claims.get("roles") or ()
    if isinstance(roles, str):
        roles = (roles,)
    return User(
        id=str(claims["sub"]),
        username=str(claims.get("username") or claims["sub"]),
        email=claims.get("email"),
        roles=tuple(str(r) for r in roles if isinstance(r, (str, int))),
        claims=claims,
    )


def parse_ttl(text: str) -> int:
    """'90' -> 90 s; '15m', '1h', '7d' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            value = int(float(text[:-1]) * units[text[-1]])
        else:
            value = int(float(text))
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use 90, 15m, 1h, 7d)") from None
    if value <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return value


def mint_token(config: AuthConfig, *, sub: str, username: str | None = None,
               email: str | None = None, roles: list[str] | None = None, ttl: int = 3600,
               private_key: str | None = None, jti: str | None = None) -> str:
    """Sign a token with the configured key (HS*), or with ``private_key`` for RS256/ES256."""
    import secrets

    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl,
                              "jti": jti or secrets.token_hex(8)}
    if username:
        claims["username"] = username
    if email:
        claims["email"] = email
    if roles:
        claims["roles"] = roles
    if config.audience:
        claims["aud"] = config.audience
    if config.issuer:
        claims["iss"] = config.issuer
    if config.algorithm.startswith("HS"):
        key: Any = config.secret
    elif private_key:
        key = private_key
    else:
        raise AuthError(f"{config.algorithm} tokens need a private key (--private-key FILE)")
    return jwt.encode(claims, key, algorithm=config.algorithm)
