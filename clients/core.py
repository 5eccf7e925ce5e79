"""What the sync and async clients share: building requests, parsing answers, retry policy."""

from __future__ import annotations

import base64
import io
import json
import os
import random
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from classifiers.schemas import ClassifyBatchResponse, ClassifyResponse
from clients.errors import ModerationAPIError
from clients.results import ManyResult

# What a caller may pass as an image: a path, raw bytes, a PIL image, or an http(s) URL.
ImageInput = Union[str, os.PathLike, bytes, "PIL.Image.Image"]  # noqa: F821

RETRY_STATUSES = frozenset({429, 503})
PIL_MAX_SIDE = 1024  # PIL inputs are shrunk to this before upload (the model sees 224 px)


@dataclass(frozen=True)
class PreparedRequest:
    """One ``POST /v1/classify``: either ``json`` or ``files`` + ``data`` is set."""

    json: dict | None = None
    files: dict | list | None = None  # {"file": (name, bytes, content_type)}, or a list of those pairs
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


def _options(classifiers, labels, unsafe_labels, threshold) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if classifiers is not None:
        options["classifiers"] = list(classifiers)
    if labels:
        options["labels"] = list(labels)
    if unsafe_labels:
        options["unsafe_labels"] = list(unsafe_labels)
    if threshold is not None:
        options["threshold"] = threshold
    return options


def _form(options: dict[str, Any]) -> dict[str, str]:
    return {key: json.dumps(value) if isinstance(value, list) else str(value) for key, value in options.items()}


def build_request(
    image: ImageInput,
    classifiers: list[str] | None = None,
    labels: list[str] | None = None,
    unsafe_labels: list[str] | None = None,
    threshold: float | None = None,
    use_base64: bool = False,
) -> PreparedRequest:
    """URLs go as JSON ``url``; everything else as a multipart upload (or base64 JSON)."""
    options = _options(classifiers, labels, unsafe_labels, threshold)
    if is_url(image):
        return PreparedRequest(json={"url": image, **options})
    name, data = _image_bytes(image)
    if use_base64:
        return PreparedRequest(json={"image_base64": base64.b64encode(data).decode(), **options})
    return PreparedRequest(files={"file": (name, data, "application/octet-stream")}, data=_form(options))


# --- many images per request (POST /v1/classify/batch) ---------------------------------------

BATCH_PATH = "/v1/classify/batch"
BATCH_BYTES = 32_000_000  # per request, base64 counted: half the server's default max_request_bytes
SINGLES_AT_ONCE = 8  # requests in flight when a chunk's images go one by one
RETRY_ITEM_CODES = frozenset({"overloaded", "model_unavailable"})  # an item worth sending again alone


def worth_one_by_one(error: ModerationAPIError) -> bool:
    """Whether images a server refused as a batch may pass alone: a body or image count over
    its limits, or overload. An error about the options or the caller (unknown classifier,
    bad key, rate limit) would only repeat, once per image."""
    if error.status in (413, 503):
        return True
    return error.status == 400 and ("images in one request" in error.message or "Too many files" in error.message)


class BatchRouteMissing(Exception):
    """The server has no ``/v1/classify/batch`` (an older version): send images one by one."""


def load_image(image: ImageInput) -> tuple[str, bytes] | str:
    """A URL as is, anything else as ``(file name, bytes)``; raises what reading it raises."""
    return image if is_url(image) else _image_bytes(image)


def load_images(images: list[ImageInput]) -> list:
    """Each image as ``load_image`` gives it, or the exception reading it raised (that image's
    answer: it is not sent)."""
    loaded: list = []
    for image in images:
        try:
            loaded.append(load_image(image))
        except Exception as exc:  # noqa: BLE001 - this image only
            loaded.append(exc)
    return loaded


def in_order(loaded: list, answers: list) -> list:
    """The server's answers for the images that were sent, merged back among the unreadable."""
    sent = iter(answers)
    return [item if isinstance(item, Exception) else next(sent) for item in loaded]


def chunk_results(indices: list[int], images: list, answers: list) -> tuple[dict[int, ManyResult], list[int]]:
    """A chunk's results by input position, and the positions the server shed (to send again)."""
    results = {i: ManyResult(i, images[i], error=answer) if isinstance(answer, Exception)
               else ManyResult(i, images[i], answer) for i, answer in zip(indices, answers)}
    again = [i for i, answer in zip(indices, answers) if getattr(answer, "code", None) in RETRY_ITEM_CODES]
    return results, again


def build_batch_request(
    loaded: list[tuple[str, bytes] | str],
    classifiers: list[str] | None = None,
    labels: list[str] | None = None,
    unsafe_labels: list[str] | None = None,
    threshold: float | None = None,
    use_base64: bool = False,
) -> PreparedRequest:
    """Files as repeated multipart ``file`` parts; JSON (files base64) when any is a URL."""
    options = _options(classifiers, labels, unsafe_labels, threshold)
    if use_base64 or any(isinstance(item, str) for item in loaded):
        images = [{"url": item} if isinstance(item, str)
                  else {"image_base64": base64.b64encode(item[1]).decode(), "id": item[0]} for item in loaded]
        return PreparedRequest(json={"images": images, **options})
    files = [("file", (name, data, "application/octet-stream")) for name, data in loaded]
    return PreparedRequest(files=files, data=_form(options))


def byte_groups(loaded: list[tuple[str, bytes] | str], budget: int = BATCH_BYTES,
                use_base64: bool = False) -> list[list[int]]:
    """Positions in ``loaded`` grouped into requests whose bodies stay within ``budget``
    (files count 4/3 when the request is JSON: any URL in it, or ``use_base64``); an image
    over the budget alone goes in a request of its own."""
    as_json = use_base64 or any(isinstance(item, str) for item in loaded)
    groups: list[list[int]] = []
    size = budget + 1
    for index, item in enumerate(loaded):
        cost = 4096 if isinstance(item, str) else len(item[1]) * (4 if as_json else 3) // 3 + 512
        if size + cost > budget:
            groups.append([])
            size = 0
        groups[-1].append(index)
        size += cost
    return groups


def parse_batch_response(status: int, body: bytes, headers: Any) -> list[ClassifyResponse | ModerationAPIError]:
    """Each image's response or error, in order; raises for an error about the whole request
    (``BatchRouteMissing`` when the server has no such route)."""
    if status == 404:
        error = api_error(status, body, headers)
        if error.code in ("not_found", "http_error"):
            raise BatchRouteMissing(error.message)
        raise error
    if status != 200:
        raise api_error(status, body, headers)
    batch = ClassifyBatchResponse.model_validate_json(body)
    out: list[ClassifyResponse | ModerationAPIError] = []
    for item in batch.items:
        if item.error is not None:
            out.append(ModerationAPIError(item.error.status, item.error.code, item.error.message, batch.request_id))
        else:
            out.append(ClassifyResponse(
                request_id=batch.request_id, model=batch.model, model_family=batch.model_family,
                flagged=item.flagged, action=item.action, results=item.results, matches=item.matches or [],
                hashes=item.hashes, cached=bool(item.cached), faces=item.faces, policies=item.policies or [],
                timing=item.timing,
            ))
    return out


def chunks(count: int, size: int) -> list[range]:
    """Consecutive index ranges of ``count`` inputs, ``size`` each (the last maybe fewer)."""
    if size < 1:
        raise ValueError(f"batch_size must be at least 1, not {size}")
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def chunks_in_threads(chunk_of: Callable[[list[int]], list], count: int, size: int, concurrency: int,
                      ordered: bool) -> Iterator:
    """``chunk_of`` over the indices of ``count`` inputs, ``size`` at a time, on ``concurrency``
    threads; yields each chunk's results as the chunk finishes (in input order with ``ordered``).
    A caller that stops early neither waits for nor starts the chunks left."""
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    try:
        futures = [pool.submit(chunk_of, list(indices)) for indices in chunks(count, size)]
        if ordered:
            for future in futures:
                yield from future.result()
            return
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield from future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


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
