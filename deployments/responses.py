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


def _causes(exc: BaseException):
    """``exc`` and what caused it, outermost first (Ray's task errors keep theirs in ``cause``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "cause", None) or current.__cause__


def as_moderation_error(exc: BaseException) -> ModerationError:
    """Find the ``ModerationError`` behind an exception from a handle call, or classify it."""
    from ray.serve.exceptions import BackPressureError

    for current in _causes(exc):
        if isinstance(current, ModerationError):
            return ModerationError(current.code, current.message)
        if isinstance(current, BackPressureError):
            return ModerationError("overloaded", "the service is overloaded; retry shortly")
        if _replica_gone(current):
            # A replica died or restarts mid-request (Ray starts a new one): retryable.
            return ModerationError("model_unavailable", REPLICA_RESTARTING)
    logger.error("unexpected error: %r", exc, exc_info=exc)
    return ModerationError("internal_error", "an internal error occurred")


def _replica_gone(exc: BaseException) -> bool:
    from ray.exceptions import ActorUnavailableError, RayActorError

    return isinstance(exc, (RayActorError, ActorUnavailableError)) or _grpc_code(exc) in _REPLICA_GONE


def replica_gone(exc: BaseException) -> bool:
    """Whether a handle call failed because its replica died, stopped or is restarting (by
    reference: a Ray actor error; by value: that or a gRPC code of ``_REPLICA_GONE``)."""
    return any(_replica_gone(current) for current in _causes(exc))


# Handle calls carrying up to this many bytes of images go to the model by value, over the gRPC
# channel Serve keeps to each replica, instead of as a Ray actor task (docs/benchmarks.md). Larger
# ones go by reference, through Ray's object store: a replica's gRPC server takes messages up to
# 4 MiB (RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH).
BY_VALUE_MAX_BYTES = 2 << 20
REPLICA_RESTARTING = "a replica is restarting; retry shortly"
# gRPC codes a handle call by value ends with when its replica stops or goes away (Serve itself
# turns UNAVAILABLE into ActorUnavailableError).
_REPLICA_GONE = {"UNAVAILABLE", "CANCELLED", "ABORTED"}


def _grpc_code(exc: BaseException) -> str | None:
    """The status code's name of a ``grpc.aio.AioRpcError`` (a handle call by value), else None."""
    code = getattr(exc, "code", None)
    if not callable(code) or type(exc).__module__.split(".")[0] != "grpc":
        return None
    return getattr(code(), "name", None)


def too_large_for_grpc(exc: BaseException) -> bool:
    """Whether a handle call by value failed because its message or answer exceeded the gRPC
    limit (RESOURCE_EXHAUSTED); by reference, through the object store, it would go."""
    return any(_grpc_code(current) == "RESOURCE_EXHAUSTED" for current in _causes(exc))


def missing_method(exc: BaseException, method: str) -> bool:
    """Whether a handle call failed because the replica has no ``method``: a replica of an older
    version, as during a rolling upgrade (Serve raises ``RayServeException`` "Tried to call a
    method '...' that does not exist")."""
    from ray.serve.exceptions import RayServeException

    return any(isinstance(current, RayServeException) and f"method '{method}' that does not exist" in str(current)
               for current in _causes(exc))


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
