"""The ``ImageFetcher`` deployment: downloads ``url`` images for the model deployment."""

from __future__ import annotations

import time

import aiohttp
from ray import serve

from classifiers.errors import ModerationError
from deployments.fetching import build_session, fetch_image
from deployments.metrics import FetchMetrics
from deployments.settings import FetchSettings


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=200)
class ImageFetcher:
    """Async downloads with one shared aiohttp session per replica."""

    def __init__(self, settings: FetchSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self.metrics = FetchMetrics()

    async def fetch(self, url: str) -> bytes | ModerationError:
        """The image bytes at ``url``, or the ``ModerationError`` saying why not.

        The error is returned, not raised: a bad URL is the client's problem, not a replica
        failure to log with a traceback. ``ClipModel.classify`` accepts it and passes it on.
        """
        if self._session is None or self._session.closed:
            self._session = build_session(self.settings)
        start = time.perf_counter()
        try:
            data = await fetch_image(self._session, url, self.settings)
        except ModerationError as error:
            self.metrics.errors.inc(tags={"code": error.code})
            return error
        self.metrics.fetch_ms.observe((time.perf_counter() - start) * 1000)
        return data

    async def __del__(self) -> None:
        if self._session is not None:
            await self._session.close()
