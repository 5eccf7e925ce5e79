"""Exceptions raised by the clients, carrying the service's error code and request id."""

from __future__ import annotations


class ModerationAPIError(Exception):
    """The service answered with an error body (or an unexpected status)."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None) -> None:
        super().__init__(f"{status} {code}: {message} (request_id={request_id})")
        self.status, self.code, self.message, self.request_id = status, code, message, request_id


class ModerationConnectionError(Exception):
    """The service could not be reached (after the configured retries)."""
