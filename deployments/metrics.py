"""Prometheus metrics through Ray Serve's metrics API (``ray.serve.metrics``).

Ray exports them, with the ``ray_`` prefix and deployment/replica tags, on every node's
metrics port (``ray start --metrics-export-port``) next to Ray Serve's own request metrics.
Each deployment builds its metrics in its constructor: nothing is registered at import time.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Histogram

from classifiers.results import Classification

MS_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]


class IngressMetrics:
    """What clients asked and what they got: decisions per classifier, and error codes."""

    def __init__(self) -> None:
        self.decisions = Counter(
            "moderation_classifications", description="Classifier results by classifier and "
            "decision (flagged or clean).", tag_keys=("classifier", "decision"),
        )
        self.images = Counter(
            "moderation_images", description="Images classified, by overall decision "
            "(flagged when any classifier flagged it).", tag_keys=("decision",),
        )
        self.errors = Counter(
            "moderation_errors", description="Requests answered with an error body, by code.",
            tag_keys=("code",),
        )

    def classified(self, result: Classification) -> None:
        for item in result.results:
            # Custom label sets are all named "custom": the tag's cardinality stays bounded.
            self.decisions.inc(tags={"classifier": item.name, "decision": _decision(item.flagged)})
        self.images.inc(tags={"decision": _decision(result.flagged)})

    def failed(self, code: str) -> None:
        self.errors.inc(tags={"code": code})


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


def _decision(flagged: bool) -> str:
    return "flagged" if flagged else "clean"

