"""Clients for the moderation service: HTTP (sync and async), in-cluster handles, and a CLI.

Importing this package needs neither Ray nor torch; the in-cluster client imports Ray lazily.
"""

from clients.errors import ModerationAPIError, ModerationConnectionError
from clients.http import ModerationClient
from clients.aio import AsyncModerationClient

__all__ = [
    "AsyncModerationClient",
    "ModerationAPIError",
    "ModerationClient",
    "ModerationConnectionError",
]
