"""Prometheus metrics through Ray Serve's metrics API (``ray.serve.metrics``).

Ray exports them, with the ``ray_`` prefix and deployment/replica tags, on every node's
metrics port (``ray start --metrics-export-port``) next to Ray Serve's own request metrics.
Each deployment builds its metrics in its constructor: nothing is registered at import time.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from ray.serve.metrics import Counter, Histogram

from classifiers.results import Classification

logger = logging.getLogger("ray.serve")

MS_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]


class BufferedCounter:
    """A Ray ``Counter`` whose increments are summed here and handed to Ray once a second.

    Each Ray metric record is a call into C++ that lets go of the GIL, and getting it back
    behind the process's other busy threads took milliseconds: in a profile of the ingress's
    event loop at 300 requests/s (``py-spy``), metric records were the largest item (a fifth
    of its samples: ours, five per request, and Serve's own per handle call), and every other
    answer, fast 503s included, waited behind them. Counts reach Ray at most ``FLUSH_S`` late.
    """

    FLUSH_S = 1.0

    def __init__(self, counter) -> None:
        self.counter = counter
        self._pending: collections.Counter = collections.Counter()  # sorted tag items -> sum
        self._flush_scheduled = False

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self._pending[tuple(sorted((tags or {}).items()))] += value
        if not self._flush_scheduled:
            try:
                asyncio.get_running_loop().call_later(self.FLUSH_S, self.flush)
                self._flush_scheduled = True
            except RuntimeError:  # no event loop in this thread: record at once
                self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, collections.Counter()
        self._flush_scheduled = False
        for tags, value in pending.items():
            try:
                self.counter.inc(value, tags=dict(tags))
            except Exception:  # noqa: BLE001 - one bad record must not lose the others
                logger.exception("recording a metric failed")

    def __getattr__(self, name: str):  # anything else a caller uses: the Ray counter's own
        if name.startswith("__") or name == "counter":
            raise AttributeError(name)
        return getattr(self.counter, name)


class IngressMetrics:
    """What clients asked and what they got: decisions per classifier, and error codes
    (summed and recorded once a second: ``BufferedCounter``)."""

    def __init__(self) -> None:
        self.decisions = BufferedCounter(Counter(
            "moderation_classifications", description="Classifier results by classifier and "
            "decision (flagged or clean).", tag_keys=("classifier", "decision"),
        ))
        self.images = BufferedCounter(Counter(
            "moderation_images", description="Images classified, by overall decision "
            "(flagged when any classifier flagged it).", tag_keys=("decision",),
        ))
        self.errors = BufferedCounter(Counter(
            "moderation_errors", description="Requests answered with an error body, by code.",
            tag_keys=("code",),
        ))
        # Their ratio is the images per model call: how well uploads share calls.
        self.upload_calls = BufferedCounter(Counter(
            "moderation_upload_calls", description="Model calls the ingress made with uploaded images "
            "(single uploads that shared a call count once: coalesce_uploads_ms).",
        ))
        self.upload_call_images = BufferedCounter(Counter(
            "moderation_upload_call_images", description="Uploaded images those model calls carried.",
        ))

    def classified(self, result: Classification) -> None:
        for item in result.results:
            # Custom label sets are all named "custom": the tag's cardinality stays bounded.
            self.decisions.inc(tags={"classifier": item.name, "decision": _decision(item.flagged)})
        self.images.inc(tags={"decision": _decision(result.flagged)})

    def failed(self, code: str) -> None:
        self.errors.inc(tags={"code": code})


def buffer_handle_counter(handle) -> None:
    """Serve counts every call through a deployment handle (``serve_handle_request_counter``)
    with one Ray metric record: sum those here too (``BufferedCounter``). Calls through the
    handle's method handles (``handle.method.remote``) share its counter."""
    counter = getattr(handle, "request_counter", None)
    if counter is not None and not isinstance(counter, BufferedCounter):
        handle.request_counter = BufferedCounter(counter)


class FetchMetrics:
    def __init__(self) -> None:
        self.errors = Counter(
            "moderation_fetch_errors", description="Image downloads that failed, by error code.",
            tag_keys=("code",),
        )
        self.fetch_ms = Histogram(
            "moderation_fetch_ms", description="Time to download one image URL (successful).",
            boundaries=MS_BUCKETS,
        )


class ModelMetrics:
    def __init__(self) -> None:
        self.decode_ms = Histogram(
            "moderation_decode_ms", description="Image decode and preprocessing time per image.",
            boundaries=MS_BUCKETS,
        )
        self.batch_size = Histogram(
            "moderation_batch_size", description="Images per forward pass.", boundaries=BATCH_BUCKETS,
        )
        self.model_ms = Histogram(
            "moderation_model_ms", description="Forward-pass time per batch.", boundaries=MS_BUCKETS,
        )
        self.shed = Counter(
            "moderation_model_shed", description="Frames (one per still image) a model replica "
            "answered 503 overloaded because they waited past the caller's wait limit (HTTP "
            "requests: twice queue_deadline_ms) for a forward pass.",
        )
        self.images = Counter(
            "moderation_model_images", description="Images (frames) that went through a forward pass.",
        )
        self.cache_hits = Counter(
            "moderation_model_cache_hits", description="Images answered from the result cache "
            "(seen recently: no decode, no forward pass).",
        )
        self.abandoned = Counter(
            "moderation_model_abandoned", description="Requests whose caller went away (the "
            "client disconnected, or the ingress gave up) before their answer: those still "
            "decoding or waiting for a forward pass were dropped without one.",
        )


def _decision(flagged: bool) -> str:
    return "flagged" if flagged else "clean"

