"""Result objects returned by the model deployment, to HTTP and handle callers alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from classifiers.labels import Kind

if TYPE_CHECKING:
    from banks.hashes import ImageHashes
    from banks.index import Match



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
class Face:
    """One detected face: ``box`` ``(x, y, w, h)`` in the original image's pixels (EXIF
    orientation applied), the detector's ``confidence`` and CLIP's score for each face
    attribute, made on the face's crop."""

    box: tuple[int, int, int, int]
    confidence: float
    attributes: dict[str, float]


@dataclass(frozen=True)
class PolicyHit:
    """A configured policy that held for the image, and the action it adds."""

    name: str
    action: str


@dataclass(frozen=True)
class Classification:
    """Every requested classifier's result for one image, with the model and its timings.

    ``model`` is the checkpoint as configured (hub id or directory); ``model_family`` its
    family (``clip``, ``siglip``, ``siglip2``). ``hashes`` are the image's SHA-256 and PDQ,
    ``matches`` the hash-bank entries it matched, ``cached`` whether its embedding came from
    the result cache (no decode, no forward pass). ``faces``: the faces found, largest first
    (``None``: faces were not asked for); ``policies``: the configured policies that held."""

    model: str
    results: tuple[ClassifierResult, ...]
    decode_ms: float
    inference_ms: float
    batch_size: int = 1
    model_family: str = "clip"
    hashes: ImageHashes | None = None
    matches: tuple[Match, ...] = ()
    cached: bool = False
    faces: tuple[Face, ...] | None = None
    policies: tuple[PolicyHit, ...] = ()
    embedding: Any = field(default=None, repr=False, compare=False)  # frames x dim, when asked for

    @property
    def action(self) -> str | None:
        """A bank's ``block``, then a policy's ``block``, then a bank's ``allow`` (which clears
        the classifiers' flags: a person put an image like this one there, but a near match is
        not reason enough to lift a policy's block), then any ``review``."""
        banks = {match.action for match in self.matches}
        rules = {hit.action for hit in self.policies}
        if "block" in banks or "block" in rules:
            return "block"
        if "allow" in banks:
            return "allow"
        return "review" if "review" in banks | rules else None

    @property
    def flagged(self) -> bool:
        """A ``block`` (a bank's or a policy's) flags whatever the scores; an ``allow`` match
        (and no ``block``) clears; otherwise any classifier that flagged."""
        action = self.action
        if action in ("block", "allow"):
            return action == "block"
        return any(r.flagged for r in self.results)

    def __getitem__(self, name: str) -> ClassifierResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)
