"""Turning label sets into head matrices with a text encoder (prompt ensembling)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from classifiers.labels import LabelSet

# Encodes texts into L2-normalised embeddings, one row per text.
TextEncoder = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True, eq=False)
class Head:
    """A label set and its head matrix.

    Exclusive sets have one row per label; attribute sets two per label (label, then its
    negation), so scoring is one matrix product either way.
    """

    label_set: LabelSet
    matrix: np.ndarray  # (rows, dim), float32, rows L2-normalised


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(min=1e-12)


def build_head(label_set: LabelSet, encode_text: TextEncoder) -> Head:
    """Encode every prompt × template once and average per label (then re-normalise)."""
    groups = []
    for label in label_set.labels:
        groups.append(label.prompts)
        if label_set.kind == "attributes":
            groups.append(label.negatives)
    texts = [t.format(p) for group in groups for p in group for t in label_set.templates]
    embeddings = _normalise(np.asarray(encode_text(texts), dtype=np.float32))
    rows, start = [], 0
    for group in groups:
        n = len(group) * len(label_set.templates)
        rows.append(embeddings[start : start + n].mean(axis=0))
        start += n
    return Head(label_set, _normalise(np.stack(rows)).astype(np.float32))


class HeadCache:
    """A bounded LRU of head matrices for caller-supplied label lists, keyed by the labels."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()

    def get(self, labels: tuple[str, ...]) -> np.ndarray | None:
        matrix = self._entries.get(labels)
        if matrix is not None:
            self._entries.move_to_end(labels)
        return matrix

    def put(self, labels: tuple[str, ...], matrix: np.ndarray) -> None:
        self._entries[labels] = matrix
        self._entries.move_to_end(labels)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
