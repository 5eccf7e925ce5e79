"""Result objects returned by the model deployment, to HTTP and handle callers alike."""

from __future__ import annotations

from dataclasses import dataclass

from classifiers.labels import Kind


@dataclass(frozen=True)
class ClassifierResult:
    """One classifier's verdict on one image.

    ``scores`` holds every label's score in declaration order. ``unsafe_score`` is what the
    threshold is compared with; ``flagged`` is that decision (never true without unsafe labels).
    """

    name: str
    kind: Kind
    scores: dict[str, float]
    top_label: str
    top_score: float
    unsafe_labels: tuple[str, ...]
    unsafe_score: float
    threshold: float
    flagged: bool


@dataclass(frozen=True)
class Classification:
    """Every requested classifier's result for one image, with the model and its timings.

    ``model`` is the checkpoint as configured (hub id or directory); ``model_family`` its
    family (``clip``, ``siglip``, ``siglip2``)."""

    model: str
    results: tuple[ClassifierResult, ...]
    decode_ms: float
    inference_ms: float
    batch_size: int = 1
    model_family: str = "clip"

    @property
    def flagged(self) -> bool:
        return any(r.flagged for r in self.results)

    def __getitem__(self, name: str) -> ClassifierResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)
