"""The Ray Data actor that scores images: the service's own ``ClipModel`` class, outside Serve.

One code path with the service: the same decode, hashes and bank matches, faces, classifiers,
custom labels, trained heads, calibration, thresholds and policies (``ClipModel.try_classify``;
``@serve.batch`` forms its forward batches here as in a replica). Rows leave as JSON text, one
column, so a batch of errors and a batch of results have the same schema.
"""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np


logger = logging.getLogger(__name__)


class ImageScorer:
    """Callable class for ``Dataset.map_batches``: ``{"source", "data", "error"}`` in,
    ``{"source", "row"}`` out (``row``: ``backfill.table.row_of`` as JSON)."""

    def __init__(self, args: dict, options: dict, embeddings: bool) -> None:
        from deployments.clip_model import ClipModel
        from deployments.settings import AppArgs

        batch_outside_serve()
        app = AppArgs.model_validate(args)
        self.model = ClipModel.func_or_class(app.model_settings(), app.runtime_config())
        self.model.reconfigure({})  # the batch size and wait from the args, as Serve applies them
        self.options = options
        self.embeddings = embeddings
        self.loop = asyncio.new_event_loop()

    def __call__(self, batch: dict) -> dict:
        from backfill.table import row_of
        from classifiers.errors import ModerationError

        items = []
        for data, error in zip(batch["data"], batch["error"]):
            if error:
                failed = json.loads(error)
                items.append(ModerationError(failed["code"], failed["message"]))
            else:
                items.append(bytes(data))
        async def score_all() -> list:
            # One image that fails unexpectedly (not bad input: a bug, a dead detector worker)
            # is its own internal_error row, never the batch's end, nor the job's.
            return await asyncio.gather(*(self.model.try_classify(item, **self.options,
                                                                  with_embedding=self.embeddings)
                                          for item in items), return_exceptions=True)

        # Ray Data calls from a thread of its own: one loop for every call (the model's batch
        # queue lives on it), set as this thread's.
        asyncio.set_event_loop(self.loop)
        outcomes = self.loop.run_until_complete(score_all())
        for source, outcome in zip(batch["source"], outcomes):
            if isinstance(outcome, Exception) and not isinstance(outcome, ModerationError):
                logger.error("backfill: %s failed: %r", source, outcome, exc_info=outcome)
        version = self.model.trained.current.version
        rows = []
        for source, outcome in zip(batch["source"], outcomes):
            embedding = getattr(outcome, "embedding", None) if self.embeddings else None
            row = row_of(str(source), outcome, version, embedding[0] if embedding is not None else None)
            rows.append(json.dumps(row, default=_plain))
        return {"source": np.asarray(batch["source"], dtype=object), "row": np.asarray(rows, dtype=object)}


def batch_outside_serve() -> None:
    """``@serve.batch`` runs outside a replica but for one start-up check that reads the
    replica's ``max_ongoing_requests`` (to log a warning; a backfill actor has none): skip it."""
    from ray.serve import batching

    check = "_warn_if_max_batch_size_exceeds_max_ongoing_requests"
    if hasattr(batching._BatchQueue, check):
        setattr(batching._BatchQueue, check, lambda self: None)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")
