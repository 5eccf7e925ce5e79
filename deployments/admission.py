"""Admission at the ingress: past saturation, answer the excess 503 at once instead of queueing it.

Measured on the tiny checkpoint, one model replica, 2 vCPUs (``python -m bench.overload``): at
concurrency 8 the service answered 200 img/s; at 128 it answered 23 img/s with p50 4.7 s and
never a 503. The CPUs were nearly idle: the requests beyond the model replica's
``max_ongoing_requests`` waited in the ingress's handle router, which polls for a free replica
with a backoff growing to 0.5 s, so freed slots sat empty between polls (with the backoff cut to
5 ms the same run answered 248 img/s). So requests now wait here, in a queue whose length is set
by what the model answers: this ingress admits a request while the requests it has in flight
would be done within ``queue_deadline_ms`` at the rate its requests have been completing
(Little's law: in flight = rate x time), and never fewer than ``min_inflight``; places and
the rate count images, so a multi-image request takes one place per image. A request
holds its place from when its body has been read until the model's answer is back (a URL
request's download included, since the model call waits for it); while every place is taken,
new requests are answered ``503 overloaded`` with Retry-After before their body is read.
More model replicas complete more requests, so the bound grows with them, as long as each
replica's share (its images/s x ``queue_deadline_ms``) stays above the autoscaler's
``target_ongoing_requests``: below that, shedding keeps the autoscaler from seeing demand.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from classifiers.errors import ModerationError
from deployments.auth import route_path
from deployments.responses import respond_error

GATED_PATHS = frozenset({"/v1/classify", "/v1/classify/batch"})
WINDOW_S = 2.0  # completions counted over this long
MIN_SAMPLES = 8  # fewer completions than this in the window: the rate is not trusted yet


class Admission:
    """How many requests may be in flight now, from the rate they have been completing."""

    def __init__(self, queue_deadline_s: float, min_inflight: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.deadline_s, self.min_inflight, self.clock = queue_deadline_s, min_inflight, clock
        self.inflight = 0
        self._done: deque[float] = deque()

    def rate(self) -> float:
        """Completions per second over the last ``WINDOW_S`` (0 until ``MIN_SAMPLES``)."""
        now = self.clock()
        while self._done and now - self._done[0] > WINDOW_S:
            self._done.popleft()
        if len(self._done) < MIN_SAMPLES:
            return 0.0
        # Over the whole window: answers come in batch-sized bursts, so the span between the
        # first and last of them would overstate the rate.
        return len(self._done) / WINDOW_S

    def limit(self) -> int:
        return max(self.min_inflight, math.ceil(self.rate() * self.deadline_s))

    def full(self) -> bool:
        return self.inflight >= self.limit()

    def try_enter(self, images: int = 1) -> bool:
        """Take a place per image, unless every place is taken (a multi-image request that
        finds room may take more than are left: it is not refused for its size alone)."""
        if self.full():
            return False
        self.inflight += images
        return True

    def leave(self, images: int = 1, classified: int = 0) -> None:
        """An admitted request's ``images`` are over; the ``classified`` ones (the model
        scored them) count in the rate. Errors do not: a flood of cheap failures must not
        raise the bound."""
        self.inflight -= images
        if classified:
            now = self.clock()
            self._done.extend([now] * classified)

    def retry_after_s(self) -> int:
        """Seconds until what is in flight now should be done: at least 1."""
        rate = self.rate()
        return max(1, math.ceil(self.inflight / rate)) if rate else 1

    def overloaded(self) -> ModerationError:
        error = ModerationError("overloaded", "the service is at capacity; retry after the Retry-After seconds")
        error.retry_after_s = self.retry_after_s()
        return error


class AdmissionGate:
    """ASGI middleware: while ``app.state.admission`` is full, answer the classify route 503
    before its body is read (the route itself takes a place once the body is in)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        admission: Admission | None = getattr(scope["app"].state, "admission", None) \
            if scope["type"] == "http" else None
        if admission is not None and route_path(scope) in GATED_PATHS and admission.full():
            from starlette.requests import Request

            return await respond_error(Request(scope), admission.overloaded())(scope, receive, send)
        await self.app(scope, receive, send)
