"""Building HTTP responses: classification results and the one error body."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from classifiers.errors import ModerationError
from classifiers.schemas import ErrorResponse

logger = logging.getLogger("ray.serve")

ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Invalid request, unknown classifier or forbidden URL"),
        (413, "Image too large"), (415, "Unsupported media type"), (422, "Image cannot be decoded"),
        (502, "Image URL failed"), (503, "Overloaded or model unavailable"),
        (504, "Image URL or model timed out"),
    )
}


def request_id_of(request: Request) -> str:
    """Ray Serve's proxy puts a request id in ``x-request-id``; honour it, else make one."""
    return request.headers.get("x-request-id") or uuid.uuid4().hex


def error_response(error: ModerationError, request_id: str, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"code": error.code, "message": error.message, "request_id": request_id}}
    return JSONResponse(body, status_code=error.status, headers=headers)


def as_moderation_error(exc: BaseException) -> ModerationError:
    """Find the ``ModerationError`` behind an exception from a handle call, or classify it."""
    from ray.serve.exceptions import BackPressureError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ModerationError):
            return ModerationError(current.code, current.message)
        if isinstance(current, BackPressureError):
            return ModerationError("overloaded", "the service is overloaded; retry shortly")
        current = getattr(current, "cause", None) or current.__cause__
    logger.error("unexpected error: %r", exc, exc_info=exc)
    return ModerationError("internal_error", "an internal error occurred")


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "image_too_large"}


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the ingress as ``{"error": {"code", "message", "request_id"}}``."""

    @app.exception_handler(ModerationError)
    async def _moderation(request: Request, exc: ModerationError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.code == "overloaded" else None
        return error_response(exc, request_id_of(request), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = "; ".join(e["msg"] for e in exc.errors()[:5])
        return error_response(ModerationError("invalid_request", message), request_id_of(request))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "invalid_request")
        error = ModerationError(code, str(exc.detail))
        response = error_response(error, request_id_of(request))
        response.status_code = exc.status_code if exc.status_code < 500 else error.status
        return response
