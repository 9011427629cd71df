"""JWT verification (PROTOCOL §1): HS256 by default, RS256/ES256 with a key file or a JWKS URL.

The algorithm comes from config, never from the token: a token whose header names another
algorithm (``none``, or HS256 signed with the public key) is refused. A token stays valid until
``exp + auth.leeway``, both at connect time and while connected. Tokens are never logged.
"""

from __future__ import annotations

import asyncio
import functools
import math
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import structlog
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import HMACAlgorithm, get_default_algorithms
from jwt.types import Options

from .config import AuthConfig
from .errors import AuthError
from .identity import User

log = structlog.get_logger(__name__)

#: the shortest HMAC secret that PyJWT does not warn about (RFC 7518 §3.2: key >= hash size)
_MIN_HMAC_BYTES = 32
_JWKS_TIMEOUT = 5.0
#: the longest token accepted, in bytes; longer ones are refused before any parsing
MAX_TOKEN_BYTES = 8192


class _HMAC(HMACAlgorithm):
    """PyJWT's HMAC algorithm, its key checks made once per key rather than on every token.
    ``prepare_key`` refuses a key that looks asymmetric (PEM, SSH, DER, a JWK: an
    algorithm-confusion defence) by trying to parse it each time, two exceptions and a JSON
    decoder for an ordinary secret: about a tenth of a connection's cost in a connect storm
    (docs/benchmarks.md). Its answer depends on the key alone, so it is kept; a refused key
    raises again on every call."""

    @functools.lru_cache(maxsize=16)  # noqa: B019 (a handful of module-lifetime instances)
    def prepare_key(self, key: str | bytes) -> bytes:
        return super().prepare_key(key)


class _Decoder(jwt.PyJWT):
    """PyJWT with its options merged once (at construction, not per token), the payload parsed
    by orjson (PyJWT's documented override point) and the HMAC key checked once (``_HMAC``,
    in this decoder's own algorithms: PyJWT's module-level ones, which ``jwt.encode`` and any
    other caller use, are left alone)."""

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        for name, digest in (("HS256", HMACAlgorithm.SHA256), ("HS384", HMACAlgorithm.SHA384),
                             ("HS512", HMACAlgorithm.SHA512)):
            self._jws.unregister_algorithm(name)
            self._jws.register_algorithm(name, _HMAC(digest))

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        try:
            payload = orjson.loads(decoded["payload"])
        except orjson.JSONDecodeError as exc:
            raise jwt.DecodeError(f"Invalid payload string: {exc}") from exc
        if not isinstance(payload, dict):
            raise jwt.DecodeError("Invalid payload string: must be a json object")
        return payload


class Revocations:
    """Revoked token ids: the static ones from config, and those revoked at run time, each kept
    until the token would have expired anyway."""

    def __init__(self, static: list[str] | None = None) -> None:
        self._static = frozenset(static or ())
        self._until: dict[str, float] = {}

    def revoke(self, jti: str, exp: float | None = None) -> None:
        """Refuse ``jti`` from now on; with ``exp``, only until then (the token's own expiry)."""
        now = time.time()
        self._until = {j: t for j, t in self._until.items() if t >= now}
        self._until[jti] = exp if exp is not None else math.inf

    def is_revoked(self, jti: str | None) -> bool:
        if not jti:
            return False
        if jti in self._static:
            return True
        until = self._until.get(jti)
        return until is not None and until >= time.time()


def _load_key_file(config: AuthConfig) -> Any:
    """The verifying key from ``auth.public_key_file``, checked now rather than per token. A
    private key is accepted too; only its public half is kept."""
    path = config.public_key_file
    assert path is not None
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise AuthError(f"auth.public_key_file: cannot read {path}: {exc.strerror or exc}") from None
    try:
        key = get_default_algorithms()[config.algorithm].prepare_key(pem)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise AuthError(f"auth.public_key_file: {path} is not a PEM key usable for "
                        f"{config.algorithm}: {exc}") from None
    if isinstance(key, (RSAPrivateKey, EllipticCurvePrivateKey)):
        key = key.public_key()
    return key


class Authenticator:
    """Verifies tokens against the configured algorithm and key (secret, key file or JWKS)."""

    #: the shortest gap, in seconds, between two JWKS fetches caused by an unknown ``kid`` or a
    #: failed fetch, so that tokens with made-up key ids cannot hammer the JWKS endpoint
    jwks_refetch_interval = 5.0

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.revocations = Revocations(config.revoked_jtis)
        self._key: Any = None
        self._jwks: dict[str | None, jwt.PyJWK] = {}
        self._jwks_fetched = -math.inf  # monotonic time of the last successful fetch
        self._jwks_tried = -math.inf  # monotonic time of the last attempt
        self._jwks_lock = asyncio.Lock()
        self._jwks_problem = "cannot fetch the JWKS"  # why there are no keys, when there are none
        if config.algorithm.startswith("HS"):
            self._key = config.secret
            if len((config.secret or "").encode()) < _MIN_HMAC_BYTES:
                log.warning("weak_jwt_secret", algorithm=config.algorithm,
                            hint=f"use a secret of at least {_MIN_HMAC_BYTES} bytes")
        elif not config.jwks_url:
            self._key = _load_key_file(config)
        required = ["sub"] + (["exp"] if config.require_exp else [])
        self._decoder = _Decoder({"require": required, "verify_aud": config.audience is not None})

    # --- JWKS -----------------------------------------------------------------------------
    async def _jwks_key(self, token: str) -> jwt.PyJWK:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise AuthError(f"malformed token: {exc}") from None
        if self._jwks_due(kid) or self._jwks_lock.locked():  # locked: a fetch is under way
            async with self._jwks_lock:
                if self._jwks_due(kid):  # another task may have fetched while we waited
                    await self._fetch_jwks()
        if not self._jwks:
            raise AuthError(self._jwks_problem)
        if kid is None and len(self._jwks) == 1:
            return next(iter(self._jwks.values()))
        key = self._jwks.get(kid)
        if key is None:
            raise AuthError(f"no {self.config.algorithm} key with kid {kid!r} in the JWKS")
        return key

    def _jwks_due(self, kid: str | None) -> bool:
        now = time.monotonic()
        if now - self._jwks_tried < self.jwks_refetch_interval:
            return False
        return now - self._jwks_fetched > self.config.jwks_cache_ttl or kid not in self._jwks

    async def _fetch_jwks(self) -> None:
        url = self.config.jwks_url
        assert url is not None
        self._jwks_tried = time.monotonic()
        try:
            timeout = aiohttp.ClientTimeout(total=_JWKS_TIMEOUT)
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
                resp.raise_for_status()
                data = await resp.json(content_type=None)
            keyset = jwt.PyJWKSet.from_dict(data)
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError,
                jwt.PyJWTError) as exc:
            log.error("jwks_fetch_failed", url=url, error=str(exc) or type(exc).__name__,
                      cached_keys=len(self._jwks))
            if not self._jwks:
                self._jwks_problem = "cannot fetch the JWKS"
            return
        # only signing keys of the configured algorithm: the key, not the token, picks it
        alg = self.config.algorithm
        self._jwks = {k.key_id: k for k in keyset.keys
                      if k.algorithm_name == alg and k.public_key_use in (None, "sig")}
        self._jwks_fetched = time.monotonic()
        if self._jwks:
            log.info("jwks_fetched", url=url, kids=sorted(str(k) for k in self._jwks))
        else:
            self._jwks_problem = f"the JWKS has no {alg} signing key"
            log.error("jwks_without_usable_keys", url=url, algorithm=alg)

    # --- verification ---------------------------------------------------------------------
    async def verify(self, token: str) -> dict[str, Any]:
        """Return the claims of a valid token or raise AuthError with the reason."""
        if not token or not isinstance(token, str):
            raise AuthError("missing token")
        if len(token) > MAX_TOKEN_BYTES or len(token.encode()) > MAX_TOKEN_BYTES:
            raise AuthError(f"token longer than {MAX_TOKEN_BYTES} bytes")
        cfg = self.config
        key = await self._jwks_key(token) if cfg.jwks_url else self._key
        try:
            claims: dict[str, Any] = self._decoder.decode(
                token, key, algorithms=[cfg.algorithm], audience=cfg.audience,
                issuer=cfg.issuer, leeway=cfg.leeway,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"missing claim {exc.claim!r}") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError(f"token not signed with {cfg.algorithm}") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        _check_claims(claims)
        if self.revocations.is_revoked(claims.get("jti")):
            raise AuthError("token revoked")
        # one string per claim name for every token: json.loads makes each token's own names
        # (~50 bytes each), which a connection keeps all its life (User.claims)
        return {sys.intern(name): value for name, value in claims.items()}

    def deadline(self, claims: dict[str, Any]) -> float | None:
        """When a connection made with ``claims`` must close (``exp`` plus the leeway that
        admitted it), or None for a token without ``exp``."""
        exp = claims.get("exp")
        return None if exp is None else float(exp) + self.config.leeway


def _check_claims(claims: dict[str, Any]) -> None:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthError("claim 'sub' must be a non-empty string")
    for name in ("username", "email"):
        if claims.get(name) is not None and not isinstance(claims[name], str):
            raise AuthError(f"claim {name!r} must be a string")
    roles = claims.get("roles")
    if roles is not None and not isinstance(roles, str) and not (
            isinstance(roles, list) and all(isinstance(r, str) for r in roles)):
        raise AuthError("claim 'roles' must be a list of strings")


def user_from_claims(claims: dict[str, Any]) -> User:
    """The connection's identity from verified claims (``roles`` may be one string)."""
    roles = claims.get("roles") or ()
    if isinstance(roles, str):
        roles = (roles,)
    return User(
        id=claims["sub"],
        username=claims.get("username") or claims["sub"],
        email=claims.get("email"),
        roles=tuple(roles),
        claims=claims,
    )


def parse_ttl(text: str) -> int:
    """'90' -> 90 s; '15m', '1h', '7d' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        value = float(number) * unit
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use 90, 15m, 1h, 7d)") from None
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"must be at least one second, got {text!r}")
    return int(value)


def mint_token(config: AuthConfig, *, sub: str, username: str | None = None,
               email: str | None = None, roles: list[str] | None = None, ttl: int = 3600,
               private_key: str | None = None, jti: str | None = None) -> str:
    """Sign a token with the configured secret (HS*), or with ``private_key`` (PEM) for
    RS256/ES256; ``aud`` and ``iss`` come from config."""
    if not sub:
        raise AuthError("the subject (user id) must not be empty")
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
        if private_key:
            raise AuthError(f"auth.algorithm is {config.algorithm}: tokens are signed with "
                            "auth.secret (JWT_SECRET), not a private key")
        key: Any = config.secret
    elif private_key:
        key = private_key
    else:
        raise AuthError(f"{config.algorithm} tokens need a private key (--private-key FILE)")
    try:
        return jwt.encode(claims, key, algorithm=config.algorithm)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise AuthError(f"cannot sign a {config.algorithm} token with that key: {exc}") from None
