"""Policies: decisions that combine classifiers and faces, written as configuration.

A policy holds when every one of its conditions does; it then adds its ``action`` to the
answer (``block`` flags the image; ``review`` asks for a person to look). Example, in
serve_config.yaml's ``args`` (or a ``user_config``: changed without a restart)::

    policies:
      - name: minor_and_nudity
        action: block
        when:
          - face: minor          # a face whose `minor` score is >= 0.5 (min_score)
          - classifier: nudity   # nudity flagged at its threshold in force

Policies are enforced on every image, whatever the request asked for: the classifiers and the
face detection they need run anyway (a head is a matrix product on the embedding already
made; faces cost a detection and a crop each), and only what was asked for is returned.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from classifiers.face_attributes import FACE_CROP_ATTRIBUTES
from classifiers.results import ClassifierResult, Face, PolicyHit

POLICY_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
FACE_LABELS = FACE_CROP_ATTRIBUTES.label_names


class Condition(BaseModel):
    """One test on an image's results; exactly one of ``classifier``, ``face`` or ``min_faces`` alone.

    - ``classifier``: that classifier flagged; with ``label``, that label's score is at least
      ``min_score`` (default 0.5); with ``min_score`` only, its unsafe score is.
    - ``face``: at least ``min_faces`` (default 1) faces whose attribute scores at least
      ``min_score`` (default 0.5).
    - ``min_faces`` alone: at least this many faces were found.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    classifier: str | None = None
    label: str | None = None
    face: str | None = Field(None, description=f"A face attribute: {', '.join(FACE_LABELS)}.")
    min_score: float | None = Field(None, ge=0.0, le=1.0)
    min_faces: int | None = Field(None, ge=1, le=1000)

    @model_validator(mode="after")
    def _one_kind(self) -> "Condition":
        named = (self.classifier is not None) + (self.face is not None)
        if named > 1 or (named == 0 and self.min_faces is None):
            raise ValueError("a condition names one of `classifier`, `face`, or `min_faces` alone")
        if self.classifier is not None and self.min_faces is not None:
            raise ValueError("`min_faces` goes with `face`, not `classifier`")
        if self.label is not None and self.classifier is None:
            raise ValueError("`label` goes with `classifier`")
        if self.face is not None and self.face not in FACE_LABELS:
            raise ValueError(f"unknown face attribute {self.face!r}; known: {', '.join(FACE_LABELS)}")
        if self.min_score is not None and self.classifier is None and self.face is None:
            raise ValueError("`min_score` goes with `classifier` or `face`")
        return self

    def holds(self, results: dict[str, ClassifierResult], faces: Sequence[Face] | None) -> bool:
        if self.classifier is not None:
            result = results.get(self.classifier)
            if result is None:
                return False
            if self.label is not None:
                return result.scores.get(self.label, 0.0) >= (0.5 if self.min_score is None else self.min_score)
            return result.flagged if self.min_score is None else result.unsafe_score >= self.min_score
        if faces is None:
            return False
        if self.face is None:
            return len(faces) >= (self.min_faces or 1)
        cut = 0.5 if self.min_score is None else self.min_score
        return sum(face.attributes.get(self.face, 0.0) >= cut for face in faces) >= (self.min_faces or 1)


class Policy(BaseModel):
    """A named rule: when every condition holds, ``action`` is added to the answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=POLICY_NAME.pattern)
    action: Literal["block", "review"]
    when: tuple[Condition, ...] = Field(min_length=1)


@dataclass(frozen=True)
class Needs:
    """What the policies need run on every image, whatever a request asked for."""

    classifiers: frozenset[str] = frozenset()
    faces: bool = False  # a face or min_faces condition
    attributes: bool = False  # a face-attribute condition


def needs(policies: Sequence[Policy]) -> Needs:
    conditions = [c for p in policies for c in p.when]
    return Needs(frozenset(c.classifier for c in conditions if c.classifier is not None),
                 any(c.classifier is None for c in conditions), any(c.face is not None for c in conditions))


def check_policies(policies: Sequence[Policy]) -> None:
    """Refuse what could never hold: duplicate names, a classifier name no classifier can have,
    a label its built-in does not have, a built-in that flags nothing named without a label.
    (Trained heads come and go with heads_dir: any name a head could have is accepted here,
    and the replica warns about one it does not serve.)"""
    from classifiers.labels import CUSTOM_NAME
    from classifiers.registry import BUILTIN_CLASSIFIERS
    from classifiers.trained import NAME_PATTERN

    names = [p.name for p in policies]
    if len(names) != len(set(names)):
        raise ValueError("policies: duplicate names")
    for policy in policies:
        for c in policy.when:
            if c.classifier is None:
                continue
            if c.classifier not in BUILTIN_CLASSIFIERS and c.classifier != CUSTOM_NAME \
                    and not NAME_PATTERN.fullmatch(c.classifier):
                raise ValueError(f"policy {policy.name}: unknown classifier {c.classifier!r}")
            builtin = BUILTIN_CLASSIFIERS.get(c.classifier)
            if builtin is None:
                continue
            if c.label is not None and c.label not in builtin.label_names:
                raise ValueError(f"policy {policy.name}: {c.classifier} has no label {c.label!r}; "
                                 f"its labels: {', '.join(builtin.label_names)}")
            if c.label is None and not builtin.unsafe:
                raise ValueError(f"policy {policy.name}: {c.classifier} flags nothing; name one of its labels "
                                 f"({', '.join(builtin.label_names)}) with `label`")


def faces_problems(policies: Sequence[Policy], enabled: bool, attributes: bool, max_faces: int) -> list[str]:
    """Face conditions the faces settings would make silently false (or always true)."""
    problems = []
    for policy in policies:
        for c in policy.when:
            if c.classifier is not None:
                continue
            if not enabled:
                problems.append(f"policy {policy.name} has a face condition, but faces.enabled is false")
            elif c.face is not None and not attributes:
                problems.append(f"policy {policy.name} tests the face attribute {c.face!r}, but faces.attributes "
                                "is false (boxes only)")
            if c.min_faces is not None and c.min_faces > max_faces:
                problems.append(f"policy {policy.name} needs {c.min_faces} faces, but at most faces.max_faces "
                                f"({max_faces}) are reported")
    return problems


def evaluate(policies: Sequence[Policy], results: Sequence[ClassifierResult],
             faces: Sequence[Face] | None) -> tuple[PolicyHit, ...]:
    """The policies that hold for one image, in configuration order."""
    by_name = {r.name: r for r in results}
    return tuple(PolicyHit(p.name, p.action) for p in policies
                 if all(c.holds(by_name, faces) for c in p.when))
