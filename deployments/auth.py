"""API keys and per-key rate limits, checked at the ingress before any fetch or model call.

Keys are configured as SHA-256 hashes (``moderation-serve --new-api-key NAME`` makes one), so
``serve_config.yaml`` holds no secret. Rate limits use the maintained ``limits`` library: a
moving window per key, in memory per ingress replica by default, or shared across replicas
through any storage ``limits`` supports (e.g. ``async+redis://host:6379``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time

from limits import parse_many
from limits.storage import storage_from_string
from limits.aio.strategies import MovingWindowRateLimiter

from classifiers.errors import ModerationError
from deployments.settings import AuthSettings

KEY_PREFIX = "mod_"


def hash_key(key: str) -> str:
    """The hex SHA-256 that ``api_keys`` holds for ``key`` (keys are random, so no salt)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh random key and its hash."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_key(key)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class Gatekeeper:
    """Who is calling (``authenticate``) and whether they may call now (``admit``)."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._names = {entry.sha256: entry.name for entry in settings.api_keys}
        self._limits = {
            entry.name: parse_many(entry.rate_limit or settings.rate_limit)
            for entry in settings.api_keys
            if entry.rate_limit or settings.rate_limit
        }
        self._limiter = (
            MovingWindowRateLimiter(storage_from_string(settings.rate_limit_storage))
            if self._limits else None
        )

    @property
    def enabled(self) -> bool:
        return bool(self._names)

    def authenticate(self, authorization: str | None) -> str | None:
        """The caller's key name; None when auth is off. Raises 401 ``unauthorized``."""
        if not self.enabled:
            return None
        token = bearer_token(authorization)
        if token is None:
            raise ModerationError("unauthorized", "an API key is required: Authorization: Bearer <key>")
        digest = hash_key(token)
        for known, name in self._names.items():  # constant time per comparison
            if hmac.compare_digest(known, digest):
                return name
        raise ModerationError("unauthorized", "the API key is not valid")

    async def admit(self, key_name: str | None) -> None:
        """Count one request for the key; raises 429 ``rate_limited`` with the wait in seconds."""
        limits = self._limits.get(key_name) if key_name else None
        if not limits or self._limiter is None:
            return
        for limit in limits:
            if not await self._limiter.test(limit, key_name):
                stats = await self._limiter.get_window_stats(limit, key_name)
                wait = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(f"rate limit of {limit} exceeded for this key; retry in {wait} s", wait)
        for limit in limits:
            await self._limiter.hit(limit, key_name)


class RateLimited(ModerationError):
    """429 ``rate_limited`` that knows how long to wait (sent as ``Retry-After``)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__("rate_limited", message)
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (type(self), (self.message, self.retry_after_s))
