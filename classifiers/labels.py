"""Label sets: what a classifier can say, how each label is prompted, and what counts as unsafe."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from classifiers.errors import ModerationError

Kind = Literal["exclusive", "attributes"]

# Prompt templates for prompt ensembling; each label description is put into every one.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of {}.",
    "a picture of {}.",
    "an image showing {}.",
    "a close-up photo of {}.",
    "a low resolution photo of {}.",
)

CUSTOM_NAME = "custom"
MIN_CUSTOM_LABELS = 2
MAX_CUSTOM_LABELS = 100
MAX_LABEL_CHARS = 200


@dataclass(frozen=True)
class Label:
    """One label. ``prompts`` describe it; ``negatives`` describe its absence (attributes only)."""

    name: str
    prompts: tuple[str, ...]
    negatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelSet:
    """A classifier's labels.

    ``exclusive``: the labels compete (one softmax), and the unsafe score is the summed
    probability of the unsafe labels. ``attributes``: each label is scored against its own
    negation, independently of the others, and the unsafe score is the largest unsafe one.
    """

    name: str
    kind: Kind
    labels: tuple[Label, ...]
    unsafe: tuple[str, ...] = ()
    threshold: float = 0.5
    description: str = ""
    templates: tuple[str, ...] = field(default=DEFAULT_TEMPLATES)

    def __post_init__(self) -> None:
        names = self.label_names
        problems = []
        if self.kind not in ("exclusive", "attributes"):
            problems.append(f"kind must be 'exclusive' or 'attributes', not {self.kind!r}")
        if len(names) < (2 if self.kind == "exclusive" else 1):
            problems.append("an exclusive set needs at least two labels")
        if len(set(names)) != len(names):
            problems.append("label names must be unique")
        if any(not label.prompts or not all(p.strip() for p in label.prompts) for label in self.labels):
            problems.append("every label needs at least one non-empty prompt")
        if self.kind == "attributes" and any(not label.negatives for label in self.labels):
            problems.append("every attribute needs negative prompts")
        if len(set(self.unsafe)) != len(self.unsafe):
            problems.append("unsafe labels must be unique")
        if not set(self.unsafe) <= set(names):
            problems.append(f"unsafe labels {sorted(set(self.unsafe) - set(names))} are not labels")
        if self.kind == "exclusive" and len(set(self.unsafe)) >= len(names):
            problems.append("an exclusive set needs at least one safe label")
        if not 0.0 < self.threshold <= 1.0:
            problems.append("threshold must be in (0, 1]")
        if not self.templates or any("{}" not in t for t in self.templates):
            problems.append("every template must contain '{}'")
        if problems:
            raise ValueError(f"label set {self.name!r}: " + "; ".join(problems))

    @cached_property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    @cached_property
    def unsafe_indices(self) -> tuple[int, ...]:
        """Positions of the unsafe labels among ``label_names``."""
        return tuple(self.label_names.index(u) for u in self.unsafe)


def _clean(text: str) -> str:
    """Whitespace runs become one space, so ``"a  cat "`` and ``"a cat"`` are one label."""
    return " ".join(str(text).split())


def custom_label_set(
    labels: list[str] | tuple[str, ...],
    unsafe: list[str] | tuple[str, ...] = (),
    threshold: float = 0.5,
) -> LabelSet:
    """A caller's own exclusive classifier; raises ``invalid_request`` on a bad label list."""
    texts = tuple(_clean(text) for text in labels)
    unsafe = tuple(dict.fromkeys(_clean(text) for text in unsafe))
    if not MIN_CUSTOM_LABELS <= len(texts) <= MAX_CUSTOM_LABELS:
        raise ModerationError(
            "invalid_request",
            f"labels: give between {MIN_CUSTOM_LABELS} and {MAX_CUSTOM_LABELS} labels, got {len(texts)}",
        )
    if any(not text or len(text) > MAX_LABEL_CHARS for text in texts):
        raise ModerationError(
            "invalid_request", f"labels: each label must be 1-{MAX_LABEL_CHARS} characters"
        )
    if len(set(texts)) != len(texts):
        raise ModerationError("invalid_request", "labels: labels must be unique")
    unknown = [u for u in unsafe if u not in texts]
    if unknown:
        raise ModerationError("invalid_request", f"unsafe_labels: {unknown} are not in labels")
    if len(set(unsafe)) >= len(texts):
        raise ModerationError("invalid_request", "unsafe_labels: leave at least one label safe")
    if not 0.0 < threshold <= 1.0:
        raise ModerationError("invalid_request", "threshold must be in (0, 1]")
    return LabelSet(
        name=CUSTOM_NAME,
        kind="exclusive",
        labels=tuple(Label(text, (text,)) for text in texts),
        unsafe=unsafe,
        threshold=threshold,
        description="Labels supplied by the caller.",
    )
