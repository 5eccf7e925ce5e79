"""``ModerationClient``: the synchronous HTTP client (httpx)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx

from classifiers.schemas import ClassifiersResponse, ClassifyResponse, HeadsStatus
from clients.core import (
    BATCH_PATH, RETRY_STATUSES, SINGLES_AT_ONCE, BatchRouteMissing, ImageInput,
    RetryPolicy, api_error, build_batch_request, build_request, byte_groups, chunk_results, chunks_in_threads,
    in_order, load_images, parse_batch_response, parse_response, worth_one_by_one,
)
from clients.banks import Banks
from clients.errors import ModerationAPIError, ModerationConnectionError
from clients.results import ManyResult


class ModerationClient:
    """Classify images with a running service.

    >>> client = ModerationClient("http://127.0.0.1:8000")
    >>> client.classify("photo.jpg", classifiers=["nudity"]).results["nudity"].flagged
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, headers=headers)
        self.retry = retry
        self._batch_route = True  # until the server shows it has no /v1/classify/batch
        self.banks = Banks(self._send, self._http)  # hash banks: client.banks.create(...), .add(...)

    def __enter__(self) -> "ModerationClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        for attempt in range(self.retry.max_retries + 1):
            last = attempt == self.retry.max_retries
            try:
                response = self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # never sent: safe to retry
                if last:
                    raise ModerationConnectionError(f"{self._http.base_url}: {exc}") from exc
                time.sleep(self.retry.delay(attempt))
                continue
            if response.status_code not in RETRY_STATUSES or last:
                return response
            time.sleep(self.retry.delay(attempt, response.headers.get("retry-after")))
        raise AssertionError("unreachable")

    def classify(
        self,
        image: ImageInput,
        classifiers: list[str] | None = None,
        labels: list[str] | None = None,
        unsafe_labels: list[str] | None = None,
        threshold: float | None = None,
        use_base64: bool = False,
    ) -> ClassifyResponse:
        """Classify one image (path, bytes, PIL image or URL); raises ``ModerationAPIError``."""
        request = build_request(image, classifiers, labels, unsafe_labels, threshold, use_base64)
        response = self._send("POST", "/v1/classify", json=request.json, files=request.files,
                              data=request.data)
        return parse_response(response.status_code, response.content, response.headers)

    def classify_batch(self, images: list[ImageInput], **options) -> list[ClassifyResponse | Exception]:
        """Classify images with ``/v1/classify/batch`` (keep to the server's
        ``max_images_per_request``, 32 by default): each image's response or its error, in
        order; an unreadable file is its own error, and images whose bodies would pass
        ``BATCH_BYTES`` go in further requests. Raises for an error about a whole request."""
        loaded = load_images(images)
        sendable = [item for item in loaded if not isinstance(item, Exception)]
        answers: list = []
        for group in byte_groups(sendable, use_base64=options.get("use_base64", False)):
            request = build_batch_request([sendable[i] for i in group], **options)
            response = self._send("POST", BATCH_PATH, json=request.json, files=request.files, data=request.data)
            answers += parse_batch_response(response.status_code, response.content, response.headers)
        return in_order(loaded, answers)

    def classify_many(
        self,
        images: Iterable[ImageInput],
        concurrency: int = 2,
        ordered: bool = False,
        batch_size: int = 16,
        **options,
    ) -> Iterator[ManyResult]:
        """Classify many images; yields each as it finishes (or in input order with
        ``ordered=True``). A failed image yields a result with ``error`` set.

        Images go ``batch_size`` to a request (``/v1/classify/batch``), ``concurrency``
        requests at a time. Images the server answered ``overloaded`` or
        ``model_unavailable`` inside a batch are sent again one by one after a pause, with
        the retry policy; so are all of a batch's images when the server refused the batch
        as a whole (too large, too many images, still overloaded after the retries), and
        every image when the server has no batch route. ``batch_size=1``: one request per
        image."""
        images = list(images)

        def one(index: int) -> ManyResult:
            try:
                return ManyResult(index, images[index], self.classify(images[index], **options))
            except Exception as exc:  # noqa: BLE001 - reported per image, never fatal
                return ManyResult(index, images[index], error=exc)

        def singles(indices: list[int]) -> list[ManyResult]:
            if len(indices) == 1:
                return [one(indices[0])]
            with ThreadPoolExecutor(min(len(indices), SINGLES_AT_ONCE)) as inner:
                return list(inner.map(one, indices))

        def chunk_of(indices: list[int]) -> list[ManyResult]:
            if len(indices) == 1 or not self._batch_route:
                return singles(indices)
            try:
                answers = self.classify_batch([images[i] for i in indices], **options)
            except BatchRouteMissing:
                self._batch_route = False
                return singles(indices)
            except ModerationAPIError as exc:  # the batch as a whole was refused
                if worth_one_by_one(exc):
                    return singles(indices)
                return [ManyResult(i, images[i], error=exc) for i in indices]
            except Exception as exc:  # noqa: BLE001 - e.g. the service is gone: each image says so
                return [ManyResult(i, images[i], error=exc) for i in indices]
            results, again = chunk_results(indices, images, answers)
            if again:
                time.sleep(self.retry.delay(0))
                results.update((r.index, r) for r in singles(again))
            return [results[i] for i in indices]

        yield from chunks_in_threads(chunk_of, len(images), batch_size, concurrency, ordered)

    def classifiers(self) -> ClassifiersResponse:
        """The model, every classifier (``kind``: ``exclusive``, ``attributes`` or ``trained``)
        and the trained heads' status."""
        response = self._send("GET", "/v1/classifiers")
        if response.status_code != 200:
            raise api_error(response.status_code, response.content, response.headers)
        return ClassifiersResponse.model_validate_json(response.content)

    def reload_heads(self) -> HeadsStatus:
        """Ask the service to read its trained heads directory now (needs an API key when
        keys are configured); returns what it serves and which files it refused."""
        response = self._send("POST", "/v1/classifiers/reload")
        if response.status_code != 200:
            raise api_error(response.status_code, response.content, response.headers)
        return HeadsStatus.model_validate_json(response.content)

    def healthy(self) -> bool:
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False
