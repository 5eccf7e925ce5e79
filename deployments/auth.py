"""API keys and per-key rate limits, checked at the ingress before any fetch or model call.

``ApiKeyGate`` (ASGI middleware) guards every path except the few in ``OPEN_PATHS``, so a
route added later is protected without anyone remembering to. Keys are configured as SHA-256 hashes (``moderation-serve --new-api-key NAME`` makes one), so
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

from starlette.requests import Request

from classifiers.errors import ModerationError
from deployments.responses import respond_error
from deployments.settings import AuthSettings

KEY_PREFIX = "mod_"
# Health probes, the try-it page and the API docs need no key.
OPEN_PATHS = frozenset({"/", "/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})
OPEN_PREFIXES = ("/static/",)


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
        self._admins = frozenset(entry.name for entry in settings.api_keys if entry.admin)
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

    def is_admin(self, key_name: str | None) -> bool:
        """May this key manage the hash banks? (Everyone may while auth is off.)"""
        return not self.enabled or key_name in self._admins

    async def admit(self, key_name: str | None, cost: int = 1) -> None:
        """Count ``cost`` (one request, or the further images of a multi-image one) for the
        key; raises 429 ``rate_limited`` with the wait in seconds."""
        limits = self._limits.get(key_name) if key_name else None
        if not limits or self._limiter is None:
            return
        for limit in limits:
            # hit() checks and counts in one step (atomic in the storage), so concurrent
            # requests cannot all pass a check before any of them is counted.
            if not await self._limiter.hit(limit, key_name, cost=cost):
                stats = await self._limiter.get_window_stats(limit, key_name)
                wait = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(f"rate limit of {limit} exceeded for this key; retry in {wait} s", wait)


class RateLimited(ModerationError):
    """429 ``rate_limited`` that knows how long to wait (sent as ``Retry-After``)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__("rate_limited", message)
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (type(self), (self.message, self.retry_after_s))


def route_path(scope) -> str:
    """The path below the application's route prefix (Serve sets it as ``root_path``)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path or "/"


class ApiKeyGate:
    """ASGI middleware: authenticate and rate-limit before any route runs or the body is read.

    Uses ``app.state.gatekeeper`` (set by the ingress replica); open while no keys are set.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        gatekeeper = getattr(scope["app"].state, "gatekeeper", None) if scope["type"] == "http" else None
        if gatekeeper is not None and gatekeeper.enabled:
            path = route_path(scope)
            if path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
                request = Request(scope)
                try:
                    key_name = gatekeeper.authenticate(request.headers.get("authorization"))
                    await gatekeeper.admit(key_name)
                    scope.setdefault("state", {})["api_key"] = key_name  # request.state.api_key
                except ModerationError as error:
                    return await respond_error(request, error)(scope, receive, send)
        await self.app(scope, receive, send)
