"""Classify from inside a Ray cluster through the model deployment's handle (no HTTP).

Use it in Ray jobs, tasks, actors, other Serve deployments and Ray Data pipelines running in
the same cluster as the service: images go straight to a ``ClipModel`` replica as bytes or
arrays, skipping the HTTP proxy and the ingress. Outside the cluster, use ``ModerationClient``.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import numpy as np

from classifiers.errors import ModerationError
from classifiers.schemas import ClassifyResponse
from clients.errors import ModerationAPIError

MODEL_DEPLOYMENT = "ClipModel"


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


def _response(result, start: float) -> ClassifyResponse:
    if isinstance(result, ModerationError):
        raise ModerationAPIError(result.status, result.code, result.message, None)
    elapsed_ms = (time.perf_counter() - start) * 1000
    return ClassifyResponse.from_classification(result, uuid.uuid4().hex, elapsed_ms)
