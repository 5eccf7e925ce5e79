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
from deployments.model_calls import service_error

logger = logging.getLogger("ray.serve")

ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Invalid request, unknown classifier or forbidden URL"),
        (401, "Missing or invalid API key (when keys are configured)"),
        (413, "Image too large"), (415, "Unsupported media type"), (422, "Image cannot be decoded"),
        (429, "Rate limit for this API key exceeded; see Retry-After"),
        (502, "Image URL failed"), (503, "Overloaded or model unavailable"),
        (504, "Image URL or model timed out"),
    )
}


def request_id_of(request: Request) -> str:
    """Ray Serve's proxy puts a request id in ``x-request-id``; honour it, else make one."""
    return request.headers.get("x-request-id") or uuid.uuid4().hex


RETRYABLE = {"overloaded", "model_unavailable"}  # 503s a client should retry after Retry-After


def error_response(error: ModerationError, request_id: str, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"code": error.code, "message": error.message, "request_id": request_id}}
    return JSONResponse(body, status_code=error.status, headers=headers)


def error_headers(error: ModerationError) -> dict[str, str]:
    """``Retry-After`` for retryable errors and rate limits; ``WWW-Authenticate`` for 401."""
    if error.code == "unauthorized":
        return {"WWW-Authenticate": "Bearer"}
    if error.code == "rate_limited":
        return {"Retry-After": str(getattr(error, "retry_after_s", 1))}
    if error.code in RETRYABLE:
        return {"Retry-After": str(getattr(error, "retry_after_s", 1))}
    return {}


def respond_error(request: Request, error: ModerationError, status: int | None = None) -> JSONResponse:
    """The error body, counted in the ingress's metrics (when the replica installed them)."""
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.failed(error.code)
    response = error_response(error, request_id_of(request), error_headers(error))
    if status is not None:
        response.status_code = status
    return response


def as_moderation_error(exc: BaseException) -> ModerationError:
    """The service's error for an exception from a handle call (``model_calls.service_error``),
    else ``internal_error``, logged with its traceback."""
    error = service_error(exc)
    if error is not None:
        return error
    logger.error("unexpected error: %r", exc, exc_info=exc)
    return ModerationError("internal_error", "an internal error occurred")


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "image_too_large"}


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the ingress as ``{"error": {"code", "message", "request_id"}}``."""

    @app.exception_handler(ModerationError)
    async def _moderation(request: Request, exc: ModerationError) -> JSONResponse:
        return respond_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = "; ".join(e["msg"] for e in exc.errors()[:5])
        return respond_error(request, ModerationError("invalid_request", message))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "invalid_request")
        error = ModerationError(code, str(exc.detail))
        return respond_error(request, error, exc.status_code if exc.status_code < 500 else error.status)
