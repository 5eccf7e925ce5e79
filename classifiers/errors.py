"""The one error type of the service: a stable code, a message and an HTTP status."""

from __future__ import annotations

# Stable error codes and the HTTP status each maps to. Clients match on the code.
ERROR_STATUS: dict[str, int] = {
    "invalid_request": 400,
    "unknown_classifier": 400,
    "url_forbidden": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "unknown_bank": 404,
    "method_not_allowed": 405,
    "bank_exists": 409,
    "image_too_large": 413,
    "unsupported_media_type": 415,
    "image_decode_error": 422,
    "rate_limited": 429,
    "fetch_failed": 502,
    "overloaded": 503,
    "model_unavailable": 503,
    "banks_unavailable": 503,
    "fetch_timeout": 504,
    "request_timeout": 504,
    "internal_error": 500,
}


class ModerationError(Exception):
    """An error the client caused or should know about; it becomes the error body as is.

    Raised anywhere (ingress, fetcher, model replica); it pickles across Ray so the ingress
    can turn it into ``{"error": {"code", "message", "request_id"}}`` with the right status.
    """

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_STATUS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return ERROR_STATUS[self.code]

    def __reduce__(self):
        return (type(self), (self.code, self.message))

    def __repr__(self) -> str:
        return f"ModerationError({self.code!r}, {self.message!r})"


class ModelLoadError(RuntimeError):
    """The checkpoint could not be loaded; the message says how to fix it, in one paragraph."""
