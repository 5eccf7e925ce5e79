"""Reading ``POST /v1/classify`` bodies: multipart upload, or JSON with ``url``/``image_base64``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from dataclasses import dataclass, field

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from classifiers.errors import ModerationError
from classifiers.labels import custom_label_set
from classifiers.registry import select_builtins
from classifiers.trained import NAME_PATTERN
from deployments.auth import route_path
from classifiers.schemas import ClassifyBatchJsonRequest, ClassifyJsonRequest, ClassifyOptions

MULTIPART_OVERHEAD = 64 * 1024  # room for form fields and boundaries around the file
LIST_FIELDS = ("classifiers", "labels", "unsafe_labels")


@dataclass(frozen=True)
class ClassifyInput:
    """A validated request: the image (bytes, or a URL to fetch) and what to run on it."""

    options: ClassifyOptions
    data: bytes | None = None
    url: str | None = None
    model_kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BatchEntry:
    """One image of a multi-image request: its bytes or URL, or why it cannot be run."""

    id: str | None = None
    data: bytes | None = None
    url: str | None = None
    error: ModerationError | None = None


@dataclass(frozen=True)
class BatchInput:
    """A validated multi-image request: one set of options, the images in order."""

    options: ClassifyOptions
    entries: list[BatchEntry]
    model_kwargs: dict = field(default_factory=dict)


def client_text(text: str | None, limit: int = 256) -> str | None:
    """Text a client chose (a file or field name) made safe to echo in JSON: characters UTF-8
    cannot carry (lone surrogates, from an exotic multipart charset) replaced, and cut."""
    return None if text is None else text.encode("utf-8", "replace").decode("utf-8")[:limit]


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    return "; ".join(parts)


def _model_kwargs(options: ClassifyOptions) -> dict:
    """Validate what to run before any fetch or model call, and shape it for the model."""
    # Trained heads come and go with the model replicas' heads directory: here only a name that
    # no head could have is refused; the replica checks the rest against the heads it serves.
    could_be_heads = [n for n in options.classifiers or () if NAME_PATTERN.fullmatch(n)]
    select_builtins(options.classifiers, could_be_heads)
    if options.labels:
        custom_label_set(options.labels, options.unsafe_labels, options.threshold or 0.5)
    return {
        "classifiers": options.classifiers,
        "labels": options.labels,
        "unsafe_labels": options.unsafe_labels,
        "threshold": options.threshold,
    }


def body_limit(max_image_bytes: int) -> int:
    """Largest request body accepted: base64 inflates by 4/3, plus room for the other fields."""
    return max_image_bytes * 4 // 3 + MULTIPART_OVERHEAD


def route_limit(limits: dict[str, int], path: str, default: int | None) -> int | None:
    """The body limit of ``path``: an exact key of ``limits``, else a pattern key (``*`` is one
    path segment, e.g. ``/v1/banks/*/import``), else ``default``."""
    if path in limits:
        return limits[path]
    for pattern, limit in limits.items():
        if "*" in pattern and re.fullmatch(re.escape(pattern).replace(r"\*", "[^/]+"), path):
            return limit
    return default


class BodySizeLimit:
    """ASGI middleware: stop reading a body past ``app.state.max_body_bytes`` (413; a route in
    ``app.state.body_limits`` has its own), also for chunked uploads that declare no
    Content-Length. Checked as the bytes arrive."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope["app"].state
        limit = route_limit(getattr(state, "body_limits", {}), route_path(scope), getattr(state, "max_body_bytes", None))
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if limit is not None and seen > limit:
                raise ModerationError("image_too_large", f"the request body is larger than {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


def _check_declared_size(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ModerationError("image_too_large", f"the request body is larger than {limit} bytes")


async def _read_capped(request: Request, limit: int) -> bytes:
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ModerationError("image_too_large", f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_base64(text: str, max_bytes: int) -> bytes:
    """Strict base64 (an optional ``data:...;base64,`` prefix and whitespace are fine)."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    if len(text) * 3 // 4 > max_bytes + 3:
        raise ModerationError("image_too_large", f"the image is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ModerationError("invalid_request", "image_base64 is not valid base64") from None


def _decode_json(body: bytes, max_bytes: int) -> ClassifyInput:
    try:
        parsed = ClassifyJsonRequest.model_validate_json(body)
    except ValidationError as exc:
        raise ModerationError("invalid_request", _validation_message(exc)) from None
    data = decode_base64(parsed.image_base64, max_bytes) if parsed.image_base64 is not None else None
    return ClassifyInput(parsed, data=data, url=parsed.url, model_kwargs=_model_kwargs(parsed))


async def _parse_json(request: Request, max_bytes: int) -> ClassifyInput:
    body = await _read_capped(request, body_limit(max_bytes))
    # Parsing and base64-decoding megabytes is CPU work: keep it off the event loop.
    return await asyncio.to_thread(_decode_json, body, max_bytes)


def _form_list(values: list[str]) -> list[str]:
    """Repeated fields, a JSON array, or one comma-separated value."""
    if len(values) == 1:
        value = values[0].strip()
        if value.startswith("["):
            try:
                items = json.loads(value)
            except ValueError:
                items = None
            if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
                raise ModerationError("invalid_request", f"expected a JSON list of strings: {value[:80]}")
            return items
        return [v.strip() for v in value.split(",") if v.strip()]
    return values


def _form_options(form, file_field: str = "file") -> ClassifyOptions:
    """The options of a multipart form (every field but the files)."""
    fields = {}
    for name in LIST_FIELDS:
        values = [v for v in form.getlist(name) if isinstance(v, str)]
        if values:
            fields[name] = _form_list(values)
    if form.get("threshold"):
        fields["threshold"] = form.get("threshold")
    unknown = set(form.keys()) - {file_field, "threshold", *LIST_FIELDS}
    if unknown:
        names = sorted(client_text(name, 64) for name in unknown)[:10]
        raise ModerationError("invalid_request", f"unknown form fields {names}")
    try:
        return ClassifyOptions.model_validate(fields)
    except ValidationError as exc:
        raise ModerationError("invalid_request", _validation_message(exc)) from None


async def _parse_multipart(request: Request, max_bytes: int) -> ClassifyInput:
    form = await request.form(max_files=1, max_fields=400)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ModerationError("invalid_request", "multipart requests need a `file` part")
        options = _form_options(form)
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ModerationError("image_too_large", f"the image is larger than {max_bytes} bytes")
        return ClassifyInput(options, data=data, model_kwargs=_model_kwargs(options))
    finally:
        await form.close()


async def parse_classify_request(request: Request, max_bytes: int) -> ClassifyInput:
    """Validate the body of ``POST /v1/classify`` into a ``ClassifyInput``."""
    if request.url.query:
        raise ModerationError(
            "invalid_request", "POST /v1/classify takes no query parameters: send options in the body"
        )
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    _check_declared_size(request, body_limit(max_bytes))
    if content_type == "application/json":
        return await _parse_json(request, max_bytes)
    if content_type == "multipart/form-data":
        return await _parse_multipart(request, max_bytes)
    raise ModerationError(
        "unsupported_media_type",
        "send multipart/form-data with a `file` part, or application/json with `url` or `image_base64`",
    )


def _too_many(count: int, max_images: int) -> None:
    if count > max_images:
        raise ModerationError("invalid_request", f"{count} images in one request; at most {max_images}")


def _decode_batch_json(body: bytes, max_bytes: int, max_images: int) -> BatchInput:
    try:
        parsed = ClassifyBatchJsonRequest.model_validate_json(body)
    except ValidationError as exc:
        raise ModerationError("invalid_request", _validation_message(exc)) from None
    _too_many(len(parsed.images), max_images)
    kwargs = _model_kwargs(parsed)
    entries = []
    for image in parsed.images:
        if image.url is not None:
            entries.append(BatchEntry(image.id, url=image.url))
            continue
        try:
            entries.append(BatchEntry(image.id, data=decode_base64(image.image_base64, max_bytes)))
        except ModerationError as error:  # this image only
            entries.append(BatchEntry(image.id, error=error))
    return BatchInput(parsed, entries, kwargs)


async def _parse_batch_multipart(request: Request, max_bytes: int, max_images: int) -> BatchInput:
    try:
        form = await request.form(max_files=max_images + 1, max_fields=400)  # one more: our message
    except HTTPException as exc:  # starlette: too many files or fields, a malformed body
        raise ModerationError("invalid_request", str(exc.detail)) from None
    try:
        uploads = [u for u in form.getlist("file") if isinstance(u, UploadFile)]
        if not uploads or len(uploads) != len(form.getlist("file")):
            raise ModerationError("invalid_request", "multipart requests need one or more `file` parts (files)")
        _too_many(len(uploads), max_images)
        options = _form_options(form)
        kwargs = _model_kwargs(options)
        entries = []
        for upload in uploads:
            data = await upload.read(max_bytes + 1)
            if len(data) > max_bytes:  # this image only
                error = ModerationError("image_too_large", f"the image is larger than {max_bytes} bytes")
                entries.append(BatchEntry(client_text(upload.filename), error=error))
            else:
                entries.append(BatchEntry(client_text(upload.filename), data=data))
        return BatchInput(options, entries, kwargs)
    finally:
        await form.close()


async def parse_batch_request(request: Request, max_bytes: int, max_images: int, max_body: int) -> BatchInput:
    """Validate the body of ``POST /v1/classify/batch``. A problem with the whole request
    (options, too many images, body) raises; a problem with one image is that entry's error."""
    if request.url.query:
        raise ModerationError("invalid_request", "POST /v1/classify/batch takes no query parameters")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    _check_declared_size(request, max_body)
    if content_type == "application/json":
        body = await _read_capped(request, max_body)
        return await asyncio.to_thread(_decode_batch_json, body, max_bytes, max_images)
    if content_type == "multipart/form-data":
        return await _parse_batch_multipart(request, max_bytes, max_images)
    raise ModerationError(
        "unsupported_media_type",
        "send multipart/form-data with `file` parts, or application/json with `images`",
    )
