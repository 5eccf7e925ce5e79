"""Classify from inside a Ray cluster through the model deployment's handle (no HTTP).

Use it in Ray jobs, tasks, actors, other Serve deployments and Ray Data pipelines running in
the same cluster as the service: images go straight to a ``ClipModel`` replica as bytes or
arrays, skipping the HTTP proxy and the ingress. Outside the cluster, use ``ModerationClient``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from classifiers.errors import ModerationError
from classifiers.schemas import ClassifyResponse
from clients.core import chunks_in_threads
from clients.errors import ModerationAPIError
from clients.results import ManyResult

logger = logging.getLogger(__name__)

MODEL_DEPLOYMENT = "ClipModel"
MANY_METHOD = "try_classify_many"


def _payload(image: Any) -> bytes | np.ndarray:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, np.ndarray):
        return image
    if isinstance(image, os.PathLike) or (isinstance(image, str) and not image.startswith(("http://", "https://"))):
        with open(image, "rb") as fh:
            return fh.read()
    if hasattr(image, "convert"):  # PIL: send the pixels upright (EXIF applied), no re-encoding
        from PIL import ImageOps

        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        raise TypeError("InClusterClient takes image data; fetch URLs with ModerationClient")
    raise TypeError(f"cannot classify {type(image).__name__}")


class InClusterClient:
    """Same inputs and result type as the HTTP clients, over a ``DeploymentHandle``.

    With ``by_value`` (the default), a call carrying up to ``BY_VALUE_MAX_BYTES`` of images goes
    to the replica by value, over the gRPC channel Serve keeps to it, as the ingress sends uploads
    (docs/benchmarks.md, "Uploads by value"); larger calls, and every call with ``by_value=False``,
    go as Ray actor tasks, the images through the object store. By value, this process must reach
    the replicas' gRPC ports (docs/operations.md); the client does not read the service's
    ``uploads_by_value``. A call that fails as a whole with one of the service's errors raises it
    as ``ModerationAPIError``, as over HTTP: 503 ``model_unavailable`` when its replica died or is
    restarting, 503 ``overloaded`` when the model's queue is full (retry both; this client does
    not retry by itself); other failures are raised as they are.
    """

    def __init__(self, app_name: str = "moderation", by_value: bool = True) -> None:
        from ray import serve

        handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=app_name)
        # Both ways asked for by name: RAY_SERVE_THROUGHPUT_OPTIMIZED would make by value the default.
        self._by_reference = handle.options(_by_reference=True)
        self._by_value = handle.options(_by_reference=False) if by_value else self._by_reference

    def _send(self, method: str, payload: Any, options: tuple) -> tuple[Any, bool]:
        """Start ``method`` on ``payload``: by value where it fits, else by reference. Returns the
        response and whether it went by value."""
        from deployments.model_calls import BY_VALUE_MAX_BYTES, payload_bytes

        by_value = self._by_value is not self._by_reference and payload_bytes(payload) <= BY_VALUE_MAX_BYTES
        handle = self._by_value if by_value else self._by_reference
        return getattr(handle, method).remote(payload, *options), by_value

    def _resolve(self, sent: tuple[Any, bool], method: str, payload: Any, options: tuple):
        """The answer of a call ``_send`` started, blocking; an answer too large for a gRPC message
        is asked for again by reference. Failures are raised as ``_failure`` says; a replica's own
        cancellation, sent back by value (or as Serve's ``RequestCancelledError``), is its failure: a
        blocking caller cannot cancel."""
        from ray.serve.exceptions import RequestCancelledError

        from deployments.model_calls import too_large_for_grpc

        response, by_value = sent
        try:
            try:
                return response.result()
            except Exception as exc:  # noqa: BLE001 - one kind is asked again, the rest raised below
                if not (by_value and too_large_for_grpc(exc)):
                    raise
            logger.warning("a %s call was too large for a gRPC message; asked again by reference", method)
            return getattr(self._by_reference, method).remote(payload, *options).result()
        except (asyncio.CancelledError, RequestCancelledError):
            raise _failure(None) from None
        except Exception as exc:
            failure = _failure(exc)
            if failure is exc:
                raise
            raise failure from exc

    async def _answer(self, method: str, payload: Any, options: tuple):
        """``_resolve(_send(...))`` without blocking. The caller's own cancellation cancels the
        call and propagates; the replica's, sent back by value, is its failure."""
        from deployments.model_calls import too_large_for_grpc

        response, by_value = self._send(method, payload, options)
        try:
            try:
                return await _awaited(response)
            except Exception as exc:  # noqa: BLE001 - one kind is asked again, the rest raised below
                if not (by_value and too_large_for_grpc(exc)):
                    raise
            logger.warning("a %s call was too large for a gRPC message; asked again by reference", method)
            return await _awaited(getattr(self._by_reference, method).remote(payload, *options))
        except Exception as exc:
            failure = _failure(exc)
            if failure is exc:
                raise
            raise failure from exc

    def _result(self, method: str, payload: Any, options: tuple):
        return self._resolve(self._send(method, payload, options), method, payload, options)

    @staticmethod
    def _options(classifiers, labels, unsafe_labels, threshold) -> tuple:
        return classifiers, labels, unsafe_labels or (), threshold

    def classify(
        self,
        image: Any,
        classifiers: list[str] | None = None,
        labels: list[str] | None = None,
        unsafe_labels: list[str] | None = None,
        threshold: float | None = None,
    ) -> ClassifyResponse:
        """Blocking call, for drivers, tasks and Ray Data ``map`` functions."""
        start = time.perf_counter()
        # try_classify returns bad-input errors as values: no replica traceback per bad image.
        options = self._options(classifiers, labels, unsafe_labels, threshold)
        return _response(self._result("try_classify", _payload(image), options), start)

    async def aclassify(
        self,
        image: Any,
        classifiers: list[str] | None = None,
        labels: list[str] | None = None,
        unsafe_labels: list[str] | None = None,
        threshold: float | None = None,
    ) -> ClassifyResponse:
        """Non-blocking call, for async actors and other Serve deployments."""
        start = time.perf_counter()
        options = self._options(classifiers, labels, unsafe_labels, threshold)
        return _response(await self._answer("try_classify", _payload(image), options), start)

    def classify_batch(
        self,
        images: Iterable[Any],
        classifiers: list[str] | None = None,
        labels: list[str] | None = None,
        unsafe_labels: list[str] | None = None,
        threshold: float | None = None,
    ) -> list[ClassifyResponse | Exception]:
        """Many images with one set of options in one handle call (``try_classify_many``): each
        image's response or its error, in order (``ModerationAPIError`` for a bad image, the
        ``OSError`` for a file that could not be read); one bad image never fails the others.
        Inside the replica each image joins the forward batches on its own. A replica of an
        older version (no ``try_classify_many``, as during a rolling upgrade) gets a call per
        image. Raises when the call as a whole fails (e.g. every replica is gone)."""
        start = time.perf_counter()
        payloads = _loaded(list(images))
        sendable = [p for p in payloads if not isinstance(p, Exception)]
        if not sendable:
            return _in_order(payloads, [], start)
        options = self._options(classifiers, labels, unsafe_labels, threshold)
        try:
            outcomes = self._result(MANY_METHOD, sendable, options)
        except Exception as exc:
            if not _older_replica(exc):
                raise
            # Every image's call sent first, then each answer awaited: they run at once, as by HTTP.
            sent = [_outcome(self._send, "try_classify", p, options) for p in sendable]
            outcomes = [call if isinstance(call, Exception) else _outcome(self._resolve, call, "try_classify", p, options)
                        for call, p in zip(sent, sendable)]
        return _in_order(payloads, outcomes, start)

    async def aclassify_batch(
        self,
        images: Iterable[Any],
        classifiers: list[str] | None = None,
        labels: list[str] | None = None,
        unsafe_labels: list[str] | None = None,
        threshold: float | None = None,
    ) -> list[ClassifyResponse | Exception]:
        """``classify_batch`` without blocking, for async actors and other Serve deployments."""
        start = time.perf_counter()
        payloads = await asyncio.to_thread(_loaded, list(images))  # file reads off the event loop
        sendable = [p for p in payloads if not isinstance(p, Exception)]
        if not sendable:
            return _in_order(payloads, [], start)
        options = self._options(classifiers, labels, unsafe_labels, threshold)
        try:
            outcomes = await self._answer(MANY_METHOD, sendable, options)
        except Exception as exc:
            if not _older_replica(exc):
                raise
            outcomes = await asyncio.gather(
                *(self._answer("try_classify", p, options) for p in sendable), return_exceptions=True)
        return _in_order(payloads, list(outcomes), start)

    def classify_many(
        self,
        images: Iterable[Any],
        concurrency: int = 2,
        ordered: bool = False,
        batch_size: int = 16,
        **options,
    ) -> Iterator[ManyResult]:
        """Classify many images; yields each as it finishes (or in input order with
        ``ordered=True``), a failed image as a result with ``error`` set. Images go
        ``batch_size`` to a handle call (``classify_batch``), ``concurrency`` calls at a time;
        a call that fails as a whole is every one of its images' error."""
        images = list(images)

        def chunk_of(indices: list[int]) -> list[ManyResult]:
            try:
                answers = self.classify_batch([images[i] for i in indices], **options)
            except Exception as exc:  # noqa: BLE001 - reported per image, never fatal
                return [ManyResult(i, images[i], error=exc) for i in indices]
            return [ManyResult(i, images[i], error=answer) if isinstance(answer, Exception)
                    else ManyResult(i, images[i], answer) for i, answer in zip(indices, answers)]

        yield from chunks_in_threads(chunk_of, len(images), batch_size, concurrency, ordered)


async def _awaited(response):
    """A handle call's answer. By value, a replica that stops sends its own cancellation back:
    unless this task is being cancelled, that is the replica's failure, not the caller's (so is
    Serve's ``RequestCancelledError``: this client never cancels a call its caller still awaits)."""
    from ray.serve.exceptions import RequestCancelledError

    try:
        return await response
    except (asyncio.CancelledError, RequestCancelledError):
        response.cancel()
        task = asyncio.current_task()
        if task is not None and not task.cancelling():
            raise _failure(None) from None
        raise


def _failure(exc: Exception | None) -> Exception:
    """What a handle call that failed as a whole raises: the service's error where it has one, as
    ``ModerationAPIError`` (503 ``model_unavailable`` for a replica that died, stopped or is
    restarting, or ``exc`` None: it cancelled the call; 503 ``overloaded`` for Serve's back
    pressure), else ``exc`` itself."""
    from deployments.model_calls import REPLICA_RESTARTING, service_error

    error = ModerationError("model_unavailable", REPLICA_RESTARTING) if exc is None else service_error(exc)
    if error is None:
        return exc
    return ModerationAPIError(error.status, error.code, error.message, None)


def _outcome(call, *args):
    """``call(*args)``, or the exception it raised: one image's answer of a fallback."""
    try:
        return call(*args)
    except Exception as error:  # noqa: BLE001 - that image's answer only
        return error


def _response(result, start: float) -> ClassifyResponse:
    if isinstance(result, ModerationError):
        raise ModerationAPIError(result.status, result.code, result.message, None)
    elapsed_ms = (time.perf_counter() - start) * 1000
    return ClassifyResponse.from_classification(result, uuid.uuid4().hex, elapsed_ms)


def _item(result, start: float) -> ClassifyResponse | Exception:
    """One image's outcome of a batch: its response, or its error as a value."""
    if isinstance(result, BaseException) and not isinstance(result, ModerationError):
        return result  # e.g. an unexpected failure, or a cancelled call, of the fallback's own call
    try:
        return _response(result, start)
    except ModerationAPIError as error:
        return error


def _loaded(images: list[Any]) -> list[bytes | np.ndarray | Exception]:
    """Each image's payload, or why it could not be read (that image's error)."""
    payloads: list = []
    for image in images:
        try:
            payloads.append(_payload(image))
        except (OSError, TypeError, ValueError) as exc:
            payloads.append(exc)
    return payloads


def _in_order(payloads: list, outcomes: list, start: float) -> list[ClassifyResponse | Exception]:
    """Outcomes of the sendable payloads put back among the unreadable ones, in input order."""
    if len(outcomes) != sum(not isinstance(p, Exception) for p in payloads):
        raise RuntimeError(f"{len(outcomes)} answers to {len(payloads)} images")
    answers = iter(outcomes)
    return [payload if isinstance(payload, Exception) else _item(next(answers), start) for payload in payloads]


def _older_replica(exc: BaseException) -> bool:
    from deployments.model_calls import missing_method

    return missing_method(exc, MANY_METHOD)
