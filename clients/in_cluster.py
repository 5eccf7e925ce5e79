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
from typing import Any

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
    """Same inputs and result type as the HTTP clients, over a ``DeploymentHandle``."""

    def __init__(self, app_name: str = "moderation") -> None:
        from ray import serve

        self._handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=app_name)

    def _call(self, image: Any, classifiers, labels, unsafe_labels, threshold):
        # try_classify returns bad-input errors as values: no replica traceback per bad image.
        return self._handle.try_classify.remote(
            _payload(image), classifiers, labels, unsafe_labels or (), threshold
        )

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
        return _response(self._call(image, classifiers, labels, unsafe_labels, threshold).result(), start)

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
        return _response(await self._call(image, classifiers, labels, unsafe_labels, threshold), start)

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
        options = (classifiers, labels, unsafe_labels or (), threshold)
        try:
            outcomes = self._handle.try_classify_many.remote(sendable, *options).result()
        except Exception as exc:
            if not _older_replica(exc):
                raise
            calls = [self._handle.try_classify.remote(p, *options) for p in sendable]
            outcomes = []
            for call in calls:
                try:
                    outcomes.append(call.result())
                except Exception as error:  # noqa: BLE001 - that image's answer only
                    outcomes.append(error)
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
        options = (classifiers, labels, unsafe_labels or (), threshold)
        try:
            outcomes = await self._handle.try_classify_many.remote(sendable, *options)
        except Exception as exc:
            if not _older_replica(exc):
                raise
            outcomes = await asyncio.gather(
                *(self._handle.try_classify.remote(p, *options) for p in sendable), return_exceptions=True)
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
