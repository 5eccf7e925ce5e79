"""Classify from inside a Ray cluster through the model deployment's handle (no HTTP).

Use it in Ray jobs, tasks, actors, other Serve deployments and Ray Data pipelines running in
the same cluster as the service: images go straight to a ``ClipModel`` replica as bytes or
arrays, skipping the HTTP proxy and the ingress. Outside the cluster, use ``ModerationClient``.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import numpy as np

from classifiers.errors import ModerationError
from classifiers.schemas import ClassifyResponse
from clients.core import chunks_in_threads
from clients.errors import ModerationAPIError
from clients.results import ManyResult

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
    the replicas' gRPC ports (docs/operations.md). A call that fails because its replica died or
    is restarting raises ``ModerationAPIError`` 503 ``model_unavailable``, as over HTTP.
    """

    def __init__(self, app_name: str = "moderation", by_value: bool = True) -> None:
        from ray import serve

        self._handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=app_name)
        self._by_value = self._handle.options(_by_reference=False) if by_value else self._handle

    def _handles(self, payload: Any) -> list:
        """The handles to ask, in order: by value where ``payload`` fits, then by reference (for
        an answer too large for a gRPC message)."""
        from deployments.responses import BY_VALUE_MAX_BYTES

        size = sum(map(_size, payload)) if isinstance(payload, list) else _size(payload)
        return [self._by_value, self._handle] if size <= BY_VALUE_MAX_BYTES and self._by_value is not self._handle \
            else [self._handle]

    def _result(self, method: str, payload: Any, options: tuple):
        """``method``'s answer, blocking; a failure raised as ``_raise_failure`` says."""
        from deployments.responses import too_large_for_grpc

        *by_value, last = self._handles(payload)
        try:
            for handle in by_value:
                try:
                    return getattr(handle, method).remote(payload, *options).result()
                except Exception as exc:  # noqa: BLE001 - one kind is asked again, the rest raised below
                    if not too_large_for_grpc(exc):
                        raise
            return getattr(last, method).remote(payload, *options).result()
        except Exception as exc:
            _raise_failure(exc)

    async def _answer(self, method: str, payload: Any, options: tuple):
        """``_result`` without blocking."""
        from deployments.responses import too_large_for_grpc

        *by_value, last = self._handles(payload)
        try:
            for handle in by_value:
                try:
                    return await _awaited(getattr(handle, method).remote(payload, *options))
                except Exception as exc:  # noqa: BLE001 - one kind is asked again, the rest raised below
                    if not too_large_for_grpc(exc):
                        raise
            return await _awaited(getattr(last, method).remote(payload, *options))
        except Exception as exc:
            _raise_failure(exc)

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
            with ThreadPoolExecutor(min(len(sendable), 16)) as pool:
                outcomes = list(pool.map(lambda p: _outcome(self._result, "try_classify", p, options), sendable))
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


def _size(payload: bytes | np.ndarray) -> int:
    return payload.nbytes if isinstance(payload, np.ndarray) else len(payload)


async def _awaited(response):
    """A handle call's answer. By value, a replica that stops sends its own cancellation back:
    unless this task is being cancelled, that is the replica's failure, not the caller's."""
    try:
        return await response
    except asyncio.CancelledError:
        response.cancel()
        task = asyncio.current_task()
        if task is not None and not task.cancelling():
            raise _unavailable() from None
        raise


def _unavailable() -> ModerationAPIError:
    from deployments.responses import REPLICA_RESTARTING

    return ModerationAPIError(503, "model_unavailable", REPLICA_RESTARTING, None)


def _raise_failure(exc: Exception) -> NoReturn:
    """Raise what a handle call that failed as a whole raises: ``ModerationAPIError`` 503
    ``model_unavailable`` when its replica died or is restarting (retry), else ``exc`` itself."""
    from deployments.responses import replica_gone

    if replica_gone(exc):
        raise _unavailable() from exc
    raise exc


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
    from deployments.responses import missing_method

    return missing_method(exc, MANY_METHOD)
