"""A bounded async load generator: multipart uploads to 127.0.0.1 at a fixed concurrency."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass

import aiohttp
import numpy as np


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    requests: int  # requests sent
    errors: int  # images that got no result (a failed multi-image request counts each of its images)
    images_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    def as_dict(self) -> dict:
        return asdict(self)


async def _run(url: str, images: list[bytes], concurrency: int, requests: int, field: str,
               form: dict[str, str], per_request: int = 1) -> LoadResult:
    latencies: list[float] = []
    errors = done_images = 0
    counter = iter(range(requests))
    timeout = aiohttp.ClientTimeout(total=300)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            nonlocal errors, done_images
            for i in counter:
                data = aiohttp.FormData()
                for k in range(per_request):
                    data.add_field(field, images[(i * per_request + k) % len(images)], filename="image.jpg",
                                   content_type="image/jpeg")
                for key, value in form.items():
                    data.add_field(key, value)
                start = time.perf_counter()
                failed = per_request
                try:
                    async with session.post(url, data=data) as response:
                        body = await response.read()
                        if response.status == 200:
                            failed = json.loads(body).get("errors", 0) if per_request > 1 else 0
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                if failed < per_request:  # throughput and latency count successful answers only
                    latencies.append(time.perf_counter() - start)
                done_images += per_request - failed
                errors += failed

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.array(latencies or [float("nan")]) * 1000
    return LoadResult(
        concurrency=concurrency, requests=requests, errors=errors,
        images_per_s=round(done_images / wall, 2), p50_ms=round(float(np.percentile(ms, 50)), 1),
        p95_ms=round(float(np.percentile(ms, 95)), 1), p99_ms=round(float(np.percentile(ms, 99)), 1),
    )


def run_load(url: str, images: list[bytes], concurrency: int, requests: int, field: str = "file",
             form: dict[str, str] | None = None, warmup: int = 0, per_request: int = 1) -> LoadResult:
    """Send ``requests`` uploads (``per_request`` images each: the url is then the batch
    route) with ``concurrency`` in flight; returns images/s, per-request latency, and the
    images that got no result as errors."""
    if warmup:
        asyncio.run(_run(url, images, concurrency, warmup, field, form or {}, per_request))
    return asyncio.run(_run(url, images, concurrency, requests, field, form or {}, per_request))


@dataclass(frozen=True)
class Answer:
    """One request of a timed run: its status (0: no answer), seconds taken, and headers."""

    status: int
    seconds: float
    retry_after: str | None
    code: str | None  # the error code of a non-200 answer
    message: str | None = None  # and its message


@dataclass
class TimedRun:
    """A timed run's answers, the wall time until the last one, and how late the load
    generator's own event loop ran (ms, sampled every 10 ms): a request's time includes that."""

    answers: list[Answer]
    wall_s: float
    loop_lag_ms: list[float]


async def _timed(url: str, images: list[bytes], concurrency: int, seconds: float, form: dict[str, str],
                 timeout_s: float, honour_retry_after: bool, offset: int = 0, pause_s: float = 0.0) -> TimedRun:
    answers: list[Answer] = []
    lag: list[float] = []
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        deadline = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            while time.perf_counter() < deadline:
                data = aiohttp.FormData()
                data.add_field("file", images[i % len(images)], filename="image.jpg", content_type="image/jpeg")
                for key, value in form.items():
                    data.add_field(key, value)
                i += concurrency
                start = time.perf_counter()
                try:
                    async with session.post(url, data=data) as response:
                        body = await response.read()
                        code = message = None
                        if response.status != 200:
                            try:
                                error = json.loads(body)["error"]
                                code, message = error["code"], error["message"]
                            except (ValueError, KeyError, TypeError):
                                code = "?"
                        retry_after = response.headers.get("Retry-After")
                        answers.append(Answer(response.status, time.perf_counter() - start, retry_after, code,
                                              message))
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    answers.append(Answer(0, time.perf_counter() - start, None, "no_answer"))
                    continue
                wait = pause_s
                if honour_retry_after and response.status in (429, 503) and retry_after:
                    wait = max(wait, float(retry_after))  # as the project's clients do
                if wait:  # never past the end of the run
                    await asyncio.sleep(min(wait, max(0.0, deadline - time.perf_counter())))

        async def watch_loop() -> None:
            while time.perf_counter() < deadline:
                before = time.perf_counter()
                await asyncio.sleep(0.01)
                lag.append((time.perf_counter() - before - 0.01) * 1000)

        start = time.perf_counter()
        await asyncio.gather(watch_loop(), *(worker(offset + k) for k in range(concurrency)))
        wall = time.perf_counter() - start
    return TimedRun(answers, wall, lag)


def _timed_in_process(kwargs: dict) -> TimedRun:
    return asyncio.run(_timed(**kwargs))


def run_together(runs: list[dict]) -> list[TimedRun]:
    """Several timed runs at once, each in a process of its own (``runs``: ``_timed``'s
    keyword arguments), so one Python event loop's lag does not show in another's times."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(len(runs)) as pool:
        return pool.map(_timed_in_process, runs)


def merged(runs: list[TimedRun]) -> TimedRun:
    return TimedRun([a for run in runs for a in run.answers], max(run.wall_s for run in runs),
                    [lag for run in runs for lag in run.loop_lag_ms])


def share(url: str, images: list[bytes], concurrency: int, seconds: float, processes: int,
          **options) -> list[dict]:
    """``concurrency`` clients shared out over ``processes`` runs for ``run_together``."""
    counts = [concurrency // processes + (k < concurrency % processes) for k in range(processes)]
    return [dict(url=url, images=images, concurrency=n, seconds=seconds, offset=sum(counts[:k]), **options)
            for k, n in enumerate(counts) if n]


def run_for(url: str, images: list[bytes], concurrency: int, seconds: float,
            form: dict[str, str] | None = None, timeout_s: float = 60,
            honour_retry_after: bool = True, processes: int = 1, pause_s: float = 0.0) -> TimedRun:
    """Closed-loop uploads with ``concurrency`` clients for ``seconds`` (no new request after
    that), each waiting ``pause_s`` between requests and out a 429/503's Retry-After unless
    told not to; ``processes`` > 1 shares the clients out over that many processes."""
    options = dict(form=form or {}, timeout_s=timeout_s, honour_retry_after=honour_retry_after, pause_s=pause_s)
    if processes <= 1:
        return asyncio.run(_timed(url, images, concurrency, seconds, **options))
    return merged(run_together(share(url, images, concurrency, seconds, processes, **options)))
