"""What the sync and async clients share: building requests, parsing answers, retry policy."""

from __future__ import annotations

import base64
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from classifiers.schemas import ClassifyResponse
from clients.errors import ModerationAPIError

# What a caller may pass as an image: a path, raw bytes, a PIL image, or an http(s) URL.
ImageInput = Union[str, os.PathLike, bytes, "PIL.Image.Image"]  # noqa: F821

RETRY_STATUSES = frozenset({429, 503})
PIL_MAX_SIDE = 1024  # PIL inputs are shrunk to this before upload (the model sees 224 px)


@dataclass(frozen=True)
class PreparedRequest:
    """One ``POST /v1/classify``: either ``json`` or ``files`` + ``data`` is set."""

    json: dict | None = None
    files: dict | None = None  # {"file": (name, bytes, content_type)}
    data: dict | None = None


def is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _image_bytes(image: ImageInput) -> tuple[str, bytes]:
    if isinstance(image, (bytes, bytearray)):
        return "image", bytes(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return path.name, path.read_bytes()
    if hasattr(image, "save"):  # a PIL image: lossless PNG, no larger than the model needs
        image = image.copy()
        image.thumbnail((PIL_MAX_SIDE, PIL_MAX_SIDE))
        buf = io.BytesIO()
        image.save(buf, "PNG")
        return "image.png", buf.getvalue()
    raise TypeError(f"cannot send {type(image).__name__} as an image")


def build_request(
    image: ImageInput,
    classifiers: list[str] | None = None,
    labels: list[str] | None = None,
    unsafe_labels: list[str] | None = None,
    threshold: float | None = None,
    use_base64: bool = False,
) -> PreparedRequest:
    """URLs go as JSON ``url``; everything else as a multipart upload (or base64 JSON)."""
    options: dict[str, Any] = {}
    if classifiers is not None:
        options["classifiers"] = list(classifiers)
    if labels:
        options["labels"] = list(labels)
    if unsafe_labels:
        options["unsafe_labels"] = list(unsafe_labels)
    if threshold is not None:
        options["threshold"] = threshold
    if is_url(image):
        return PreparedRequest(json={"url": image, **options})
    name, data = _image_bytes(image)
    if use_base64:
        return PreparedRequest(json={"image_base64": base64.b64encode(data).decode(), **options})
    form = {key: json.dumps(value) if isinstance(value, list) else str(value)
            for key, value in options.items()}
    return PreparedRequest(files={"file": (name, data, "application/octet-stream")}, data=form)


def parse_response(status: int, body: bytes, headers: Any) -> ClassifyResponse:
    """A ``ClassifyResponse`` for 200; a ``ModerationAPIError`` with the service's code else."""
    if status == 200:
        return ClassifyResponse.model_validate_json(body)
    raise api_error(status, body, headers)


def api_error(status: int, body: bytes, headers: Any) -> ModerationAPIError:
    request_id = headers.get("x-request-id")
    try:
        error = json.loads(body)["error"]
        return ModerationAPIError(status, error["code"], error["message"], error.get("request_id", request_id))
    except (ValueError, KeyError, TypeError):
        text = body[:200].decode("utf-8", "replace")
        return ModerationAPIError(status, "http_error", text or f"HTTP {status}", request_id)


@dataclass(frozen=True)
class RetryPolicy:
    """Retry 429/503 and connection errors (never other 4xx), with jittered exponential backoff."""

    max_retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after and retry_after.replace(".", "", 1).isdigit():
            return min(float(retry_after), self.max_backoff_s)
        base = min(self.backoff_s * 2**attempt, self.max_backoff_s)
        return base * (0.5 + random.random() / 2)
