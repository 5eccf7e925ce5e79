"""``AsyncModerationClient``: the asyncio HTTP client (aiohttp)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import aiohttp

from classifiers.schemas import ClassifiersResponse, ClassifyResponse, HeadsStatus
from clients.core import (
    BATCH_PATH, RETRY_STATUSES, SINGLES_AT_ONCE, BatchRouteMissing, ImageInput,
    RetryPolicy, api_error, build_batch_request, build_request, byte_groups, chunk_results, chunks,
    in_order, load_images, parse_batch_response, parse_response, worth_one_by_one,
)
from clients.errors import ModerationAPIError, ModerationConnectionError
from clients.results import ManyResult


class AsyncModerationClient:
    """The async twin of ``ModerationClient``; use it as ``async with``."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self.retry = retry
        self._batch_route = True  # until the server shows it has no /v1/classify/batch

    async def __aenter__(self) -> "AsyncModerationClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self._session

    async def _send(self, method: str, path: str, make_body=None) -> tuple[int, bytes, dict]:
        for attempt in range(self.retry.max_retries + 1):
            last = attempt == self.retry.max_retries
            try:
                body = make_body() if make_body else {}
                async with self._client().request(method, self.base_url + path, **body) as response:
                    content = await response.read()
                    status, headers = response.status, response.headers
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
                if last:
                    raise ModerationConnectionError(f"{self.base_url}: {exc!r}") from exc
                await asyncio.sleep(self.retry.delay(attempt))
                continue
            if status not in RETRY_STATUSES or last:
                return status, content, headers
            await asyncio.sleep(self.retry.delay(attempt, headers.get("retry-after")))
        raise AssertionError("unreachable")

    async def classify(
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

        def body() -> dict:  # a FormData can be sent once: build it per attempt
            if request.json is not None:
                return {"json": request.json}
            form = aiohttp.FormData()
            name, data, content_type = request.files["file"]
            form.add_field("file", data, filename=name, content_type=content_type)
            for key, value in (request.data or {}).items():
                form.add_field(key, value)
            return {"data": form}

        status, content, headers = await self._send("POST", "/v1/classify", body)
        return parse_response(status, content, headers)

    async def classify_batch(self, images: list[ImageInput], **options) -> list[ClassifyResponse | Exception]:
        """Classify images with ``/v1/classify/batch`` (see ``ModerationClient.classify_batch``)."""
        loaded = await asyncio.to_thread(load_images, images)
        sendable = [item for item in loaded if not isinstance(item, Exception)]
        answers: list = []
        for group in byte_groups(sendable, use_base64=options.get("use_base64", False)):
            request = build_batch_request([sendable[i] for i in group], **options)

            def body(request=request) -> dict:  # a FormData can be sent once: build it per attempt
                if request.json is not None:
                    return {"json": request.json}
                form = aiohttp.FormData()
                for field, (name, data, content_type) in request.files:
                    form.add_field(field, data, filename=name, content_type=content_type)
                for key, value in (request.data or {}).items():
                    form.add_field(key, value)
                return {"data": form}

            status, content, headers = await self._send("POST", BATCH_PATH, body)
            answers += parse_batch_response(status, content, headers)
        return in_order(loaded, answers)

    async def classify_many(
        self,
        images: Iterable[ImageInput],
        concurrency: int = 2,
        ordered: bool = False,
        batch_size: int = 16,
        **options,
    ) -> AsyncIterator[ManyResult]:
        """Classify many images; yields as each finishes (or in input order with
        ``ordered=True``). A failed image yields a result with ``error`` set. Images go
        ``batch_size`` to a request, ``concurrency`` requests at a time, and one by one where
        a batch cannot (see ``ModerationClient.classify_many``)."""
        images = list(images)
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(index: int) -> ManyResult:
            try:
                return ManyResult(index, images[index], await self.classify(images[index], **options))
            except Exception as exc:  # noqa: BLE001 - reported per image, never fatal
                return ManyResult(index, images[index], error=exc)

        async def singles(indices: list[int]) -> list[ManyResult]:
            inner = asyncio.Semaphore(SINGLES_AT_ONCE)

            async def gated(index: int) -> ManyResult:
                async with inner:
                    return await one(index)

            return list(await asyncio.gather(*(gated(i) for i in indices)))

        async def chunk_of(indices: list[int]) -> list[ManyResult]:
            async with gate:
                if len(indices) == 1 or not self._batch_route:
                    return await singles(indices)
                try:
                    answers = await self.classify_batch([images[i] for i in indices], **options)
                except BatchRouteMissing:
                    self._batch_route = False
                    return await singles(indices)
                except ModerationAPIError as exc:  # the batch as a whole was refused
                    if worth_one_by_one(exc):
                        return await singles(indices)
                    return [ManyResult(i, images[i], error=exc) for i in indices]
                except Exception as exc:  # noqa: BLE001 - e.g. the service is gone
                    return [ManyResult(i, images[i], error=exc) for i in indices]
                results, again = chunk_results(indices, images, answers)
                if again:
                    await asyncio.sleep(self.retry.delay(0))
                    results.update((r.index, r) for r in await singles(again))
                return [results[i] for i in indices]

        tasks = [asyncio.ensure_future(chunk_of(list(indices))) for indices in chunks(len(images), batch_size)]
        try:
            for next_done in (tasks if ordered else asyncio.as_completed(tasks)):
                for result in await next_done:
                    yield result
        finally:
            for task in tasks:
                task.cancel()

    async def classifiers(self) -> ClassifiersResponse:
        """The model, every classifier (``kind``: ``exclusive``, ``attributes`` or ``trained``)
        and the trained heads' status."""
        status, content, headers = await self._send("GET", "/v1/classifiers")
        if status != 200:
            raise api_error(status, content, headers)
        return ClassifiersResponse.model_validate_json(content)

    async def reload_heads(self) -> HeadsStatus:
        """Ask the service to read its trained heads directory now (see ``ModerationClient``)."""
        status, content, headers = await self._send("POST", "/v1/classifiers/reload")
        if status != 200:
            raise api_error(status, content, headers)
        return HeadsStatus.model_validate_json(content)
