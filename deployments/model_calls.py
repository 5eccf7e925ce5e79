"""Handle calls to the model deployment, shared by the ingress and ``InClusterClient``: which calls go
by value, and what a failed call means (no FastAPI here: in-cluster callers import it)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from classifiers.errors import ModerationError

# Handle calls carrying up to this many bytes of images go to the model by value, over the gRPC
# channel Serve keeps to each replica, instead of as a Ray actor task (docs/benchmarks.md). Larger
# ones go by reference, through Ray's object store: a replica's gRPC server takes messages up to
# 4 MiB (RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH).
BY_VALUE_MAX_BYTES = 2 << 20
REPLICA_RESTARTING = "a replica is restarting; retry shortly"
# gRPC codes a handle call by value ends with when its replica stops or goes away (Serve itself
# turns UNAVAILABLE into ActorUnavailableError).
_REPLICA_GONE = {"UNAVAILABLE", "CANCELLED", "ABORTED"}


def payload_bytes(payload: bytes | np.ndarray | Sequence[bytes | np.ndarray]) -> int:
    """Bytes of images a call carries: an upload's, an array's pixels, or a list's sum."""
    if isinstance(payload, np.ndarray):
        return payload.nbytes
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return len(payload)
    if isinstance(payload, (list, tuple)):
        return sum(map(payload_bytes, payload))
    raise TypeError(f"not image data: {type(payload).__name__}")


def _causes(exc: BaseException):
    """``exc`` and what caused it, outermost first (Ray's task errors keep theirs in ``cause``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "cause", None) or current.__cause__


def service_error(exc: BaseException) -> ModerationError | None:
    """The service's error for a failed handle call, where it has one: the ``ModerationError``
    behind it, 503 ``overloaded`` for Serve's back pressure, 503 ``model_unavailable`` for a replica
    that died, stopped or is restarting; None for anything else (an unexpected failure)."""
    from ray.serve.exceptions import BackPressureError

    for current in _causes(exc):
        if isinstance(current, ModerationError):
            return ModerationError(current.code, current.message)
        if isinstance(current, BackPressureError):
            return ModerationError("overloaded", "the service is overloaded; retry shortly")
        if _replica_gone(current):
            # A replica died or restarts mid-request (Ray starts a new one): retryable.
            return ModerationError("model_unavailable", REPLICA_RESTARTING)
    return None


def _replica_gone(exc: BaseException) -> bool:
    from ray.exceptions import ActorUnavailableError, RayActorError

    return isinstance(exc, (RayActorError, ActorUnavailableError)) or _grpc_code(exc) in _REPLICA_GONE


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
