"""Downloading an image URL under limits, with the address policy applied to every hop.

Pure asyncio + aiohttp (no Ray), so it can be tested against local servers. The address
policy lives in ``url_policy``; the resolver below applies it to what DNS returns, so the
address connected to is the address that was checked.
"""

from __future__ import annotations

import asyncio
import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from classifiers.errors import ModerationError
from classifiers.preprocess import SNIFF_BYTES, looks_like_image
from deployments.settings import FetchSettings
from deployments.url_policy import AddressPolicy, check_url

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK = 64 * 1024


class GuardedResolver(AbstractResolver):
    """Resolves with the system resolver and keeps only addresses the policy allows."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._policy.allows(r["host"])]
        if not allowed:
            raise ModerationError("url_forbidden", "the URL's host resolves to a forbidden address")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def build_session(settings: FetchSettings, resolver: AbstractResolver | None = None) -> aiohttp.ClientSession:
    """One session per fetcher replica: guarded resolver, no cookies, no proxies from the env."""
    policy = AddressPolicy.from_settings(settings)
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(policy, resolver), limit=100, ttl_dns_cache=None, use_dns_cache=False
    )
    return aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout_s),
        headers={"User-Agent": "clip-moderation/0.1 (image fetcher)"},
        auto_decompress=True,
    )


async def fetch_image(session: aiohttp.ClientSession, url: str, settings: FetchSettings) -> bytes:
    """Download ``url`` (following at most ``max_redirects``, re-checking each hop).

    Raises ``ModerationError``: url_forbidden, fetch_timeout, fetch_failed, image_too_large,
    unsupported_media_type.
    """
    policy = AddressPolicy.from_settings(settings)
    try:
        async with asyncio.timeout(settings.timeout_s):
            return await _follow(session, URL(url, encoded=False), settings, policy)
    except TimeoutError:
        raise ModerationError(
            "fetch_timeout", f"the image download took longer than {settings.timeout_s:g} s"
        ) from None
    except ValueError as exc:
        raise ModerationError("url_forbidden", f"invalid URL: {exc}") from None
    except aiohttp.ClientError as exc:
        if isinstance(exc.__cause__, ModerationError):  # raised by the guarded resolver
            raise exc.__cause__ from None
        raise ModerationError("fetch_failed", f"the image download failed: {type(exc).__name__}") from None


async def _follow(
    session: aiohttp.ClientSession, url: URL, settings: FetchSettings, policy: AddressPolicy
) -> bytes:
    for _hop in range(settings.max_redirects + 1):
        check_url(url, settings, policy)
        async with session.get(url, allow_redirects=False) as response:
            if response.status in REDIRECT_STATUSES:
                location = response.headers.get("Location")
                if not location:
                    raise ModerationError("fetch_failed", "a redirect without a Location header")
                url = url.join(URL(location))
                continue
            if response.status != 200:
                raise ModerationError(
                    "fetch_failed", f"the image URL answered HTTP {response.status}"
                )
            return await _read_image(response, settings.max_bytes)
    raise ModerationError("fetch_failed", f"more than {settings.max_redirects} redirects")


async def _read_image(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """Stream the body under the byte cap; the bytes, not Content-Type, say if it is an image."""
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise ModerationError("image_too_large", f"the image is larger than {max_bytes} bytes")
    chunks, total, sniffed = [], 0, False
    async for chunk in response.content.iter_chunked(CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise ModerationError("image_too_large", f"the image is larger than {max_bytes} bytes")
        chunks.append(chunk)
        if not sniffed and total >= SNIFF_BYTES:  # refuse an HTML page before downloading it all
            _sniff(b"".join(chunks)[:SNIFF_BYTES], response)
            sniffed = True
    body = b"".join(chunks)
    if not sniffed:
        _sniff(body, response)
    return body


def _sniff(prefix: bytes, response: aiohttp.ClientResponse) -> None:
    if not looks_like_image(prefix):
        served = response.headers.get("Content-Type", "no Content-Type").split(";")[0]
        raise ModerationError(
            "unsupported_media_type", f"the URL did not serve a supported image (it said {served})"
        )
