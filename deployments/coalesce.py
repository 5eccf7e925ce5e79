"""Single-image uploads that arrive together go to the model in one call.

Each ``POST /v1/classify`` upload would otherwise be its own handle call, and at 1024x768 a
handle call costs the ingress and the model replica about as much CPU as decoding the image
(Serve's router, Ray's task submission and reply, the replica's request handling). While at least
``min_out`` (``coalesce_min_out``, 8) other uploads are already out at the model, an arriving
upload waits up to ``wait_s`` (``coalesce_uploads_ms``, 5 ms by default) for others with the same
options, and they go as one ``try_classify_many`` call of up to ``max_images``: each image is
still decoded and batched on its own in the replica, and fails alone.
An upload that finds fewer out goes at once: with few in flight a group-mate rarely comes within
the wait, and the wait is then lost (2-4 in flight on 2 vCPUs, ViT-B/32: 4-27 % less throughput
with every upload waiting, docs/benchmarks.md).

The shared call runs in a context of its own, not in the request context of the caller that
happened to open or fill the group: Serve cancels a request's child calls when its client goes
away, and one client leaving must not fail the others. The price of sharing: the call answers
when its last image is done (an image may wait for a group-mate's forward pass), a call that
fails as a whole (its timeout, a replica lost) fails every image in it, and images of callers
that left are still classified once sent, unless every caller of the call has left: then the
call is cancelled, as Serve cancels a caller's own call, and the model drops the images not yet
forward-passed.

Why not ``@serve.batch``: it keeps one queue per decorated function and process, bound to the
event loop that first used it, forms batches regardless of whether anything else is in flight,
and does not group by options; this is the little it takes to do those here.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

SendGroup = Callable[[list[bytes], dict], Awaitable[list]]


def options_key(model_kwargs: dict) -> str:
    """Uploads whose options give the same key may share a model call."""
    return repr(sorted(model_kwargs.items()))


class UploadCoalescer:
    """Gathers uploads for ``send_group(images, model_kwargs) -> one outcome per image``, which
    must answer every image (an error is an outcome), never raise."""

    def __init__(self, send_group: SendGroup, max_images: int, wait_s: float, min_out: int = 1) -> None:
        self._send_group = send_group
        self.max_images, self.wait_s, self.min_out = max_images, wait_s, max(1, min_out)
        self._pending: dict[str, list[tuple[bytes, asyncio.Future]]] = {}
        self._out = 0  # uploads sent or waiting here, not yet answered
        self._sending: set[asyncio.Task] = set()
        self.calls = self.images = 0  # model calls made and images they carried (read by the tests)

    async def classify(self, data: bytes, model_kwargs: dict) -> Any:
        """The upload's outcome, from a call of its own or one shared with others."""
        alone = self._out < self.min_out or self.wait_s <= 0 or self.max_images <= 1
        self._out += 1
        try:
            if alone:
                self.calls, self.images = self.calls + 1, self.images + 1
                outcomes = await self._send_group([data], model_kwargs)
                if len(outcomes) != 1:
                    raise RuntimeError(f"{len(outcomes)} answers to 1 image")
                return outcomes[0]
            return await self._join(data, model_kwargs)
        finally:
            self._out -= 1

    def _join(self, data: bytes, model_kwargs: dict) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        key = options_key(model_kwargs)
        future = loop.create_future()
        group = self._pending.get(key)
        if group is None:
            group = self._pending[key] = []
            loop.call_later(self.wait_s, self._flush, key, group, model_kwargs, context=contextvars.Context())
        group.append((data, future))
        if len(group) >= self.max_images:
            self._flush(key, group, model_kwargs)
        return future

    def _flush(self, key: str, group: list, model_kwargs: dict) -> None:
        """Send ``group`` unless it went already (full before its timer fired)."""
        if self._pending.get(key) is not group:
            return
        del self._pending[key]
        waiting = [(data, future) for data, future in group if not future.done()]  # callers gone: skipped
        if not waiting:
            return
        self.calls, self.images = self.calls + 1, self.images + len(waiting)
        # A context of its own: not the request context of whichever caller opened or filled the group.
        task = asyncio.get_running_loop().create_task(self._send(waiting, model_kwargs),
                                                      context=contextvars.Context())
        self._sending.add(task)  # held until done, so the task is not collected mid-call
        task.add_done_callback(partial(self._settle, waiting))
        for _, future in waiting:
            future.add_done_callback(partial(self._caller_left, waiting, task))

    @staticmethod
    def _caller_left(waiting: list[tuple[bytes, asyncio.Future]], task: asyncio.Task, future: asyncio.Future) -> None:
        """Once every caller of a sent call has left, cancel the call (the model drops images
        not yet forward-passed), as Serve does for a caller's own call."""
        if future.cancelled() and not task.done() and all(f.cancelled() for _, f in waiting):
            task.cancel()

    async def _send(self, waiting: list[tuple[bytes, asyncio.Future]], model_kwargs: dict) -> None:
        outcomes = await self._send_group([data for data, _ in waiting], model_kwargs)
        if len(outcomes) != len(waiting):
            raise RuntimeError(f"{len(outcomes)} answers to {len(waiting)} images")
        for (_, future), outcome in zip(waiting, outcomes):
            if not future.done():
                future.set_result(outcome)

    def _settle(self, waiting: list[tuple[bytes, asyncio.Future]], task: asyncio.Task) -> None:
        """Whatever ended the call (answers, an exception, a cancellation even before it ran),
        no caller is left waiting."""
        self._sending.discard(task)
        error = RuntimeError("the shared model call was cancelled") if task.cancelled() else task.exception()
        for _, future in waiting:
            if not future.done():
                future.set_exception(error or RuntimeError("the shared model call gave no answer"))
