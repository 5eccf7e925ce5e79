"""Scoring an image embedding against a head, and the flag decision."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classifiers.heads import Head
from classifiers.labels import LabelSet
from classifiers.results import ClassifierResult


@dataclass(frozen=True)
class LogitRule:
    """How a model turns cosines into logits, and how attribute sets read them.

    CLIP (``sigmoid=False``): logit = ``scale`` x cosine, trained with a softmax, so an
    attribute is a two-way softmax of the label's prompt against its negation. SigLIP
    (``sigmoid=True``): logit = ``scale`` x cosine + ``bias``, trained with a sigmoid per
    image-text pair, so an attribute's score is the sigmoid of its own prompt's logit.
    Exclusive sets take a softmax over the logits either way (the bias cancels out).
    """

    scale: float
    bias: float = 0.0
    sigmoid: bool = False


def softmax(logits: np.ndarray) -> np.ndarray:
    """Over the last axis (one row of logits, or one per row)."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def label_logits(head: Head, embedding: np.ndarray, rule: LogitRule) -> np.ndarray:
    """One logit per head row (attributes: label, negation, ...), by the model's ``rule``."""
    return rule.scale * (head.matrix @ embedding.astype(np.float32)) + rule.bias


def label_scores(
    head: Head, embedding: np.ndarray, rule: LogitRule, temperature: float = 1.0
) -> np.ndarray:
    """Per-label scores: a softmax over exclusive labels; for attributes, each label against
    its negation (CLIP) or on its own (SigLIP's sigmoid, see ``LogitRule``).

    ``embedding`` is one L2-normalised image embedding; logits are divided by the
    classifier's calibration ``temperature`` (1: uncalibrated).
    """
    logits = label_logits(head, embedding, rule) / temperature
    if head.label_set.kind == "exclusive":
        return softmax(logits)
    if rule.sigmoid:
        return sigmoid(logits[0::2])
    return sigmoid(logits[0::2] - logits[1::2])  # two-way softmax: label vs its negation


def score(
    head: Head,
    embedding: np.ndarray,
    rule: LogitRule,
    threshold: float | None = None,
    temperature: float = 1.0,
) -> ClassifierResult:
    """Score one image for one classifier and decide whether it is flagged.

    ``embedding`` is one embedding, or one per frame ``(frames, dim)``: then each label's
    score and the unsafe score are the maximum over frames (one bad frame is enough).
    ``temperature`` is the classifier's calibration temperature (see ``label_scores``).
    (Trained heads score through ``classifiers.trained.HeadStack``.)
    """
    per_frame = np.stack([label_scores(head, e, rule, temperature) for e in np.atleast_2d(embedding)])
    return decide(head.label_set, per_frame, threshold)


def decide(label_set: LabelSet, per_frame: np.ndarray | list[list[float]],
           threshold: float | None = None, rounded: bool = False) -> ClassifierResult:
    """The verdict from per-label scores ``(frames, labels)`` (an array or lists): each label's
    maximum over frames, the unsafe score (exclusive: summed unsafe probability; attributes: the largest unsafe
    label) and ``flagged = unsafe_score >= threshold`` (the label set's own by default).
    ``rounded``: the scores are already rounded to the 6 decimals the caller sees."""
    threshold = label_set.threshold if threshold is None else threshold
    # Plain floats from here: a classifier has a handful of labels, where numpy's per-call
    # overhead would cost more than the arithmetic (this runs per classifier per image).
    rows = per_frame.tolist() if isinstance(per_frame, np.ndarray) else per_frame
    probs = rows[0] if len(rows) == 1 else [max(column) for column in zip(*rows)]
    names = label_set.label_names
    unsafe_idx = label_set.unsafe_indices
    if not unsafe_idx:
        unsafe_score = 0.0
    elif label_set.kind == "exclusive":
        unsafe_score = max(sum(row[i] for i in unsafe_idx) for row in rows)
    else:
        unsafe_score = max(row[i] for row in rows for i in unsafe_idx)
    unsafe_score = round(unsafe_score, 6)  # decide on the value the caller sees
    top = max(range(len(probs)), key=probs.__getitem__)
    return ClassifierResult(
        name=label_set.name,
        kind=label_set.kind,
        scores=dict(zip(names, probs)) if rounded else {n: round(p, 6) for n, p in zip(names, probs)},
        top_label=names[top],
        top_score=probs[top] if rounded else round(probs[top], 6),
        unsafe_labels=label_set.unsafe,
        unsafe_score=unsafe_score,
        threshold=threshold,
        flagged=bool(unsafe_idx) and unsafe_score >= threshold,
    )
