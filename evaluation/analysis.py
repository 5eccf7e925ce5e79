"""From one label set's scores and the true labels to every number the report shows."""

from __future__ import annotations

import numpy as np

from evaluation import metrics
from evaluation.backends import Scored


def binary_view(scored: Scored, y: np.ndarray) -> np.ndarray | None:
    """1 where the true label is unsafe; ``None`` when the classifier has no unsafe labels."""
    label_set = scored.label_set
    if not label_set.unsafe:
        return None
    unsafe_idx = [label_set.label_names.index(u) for u in label_set.unsafe]
    return np.isin(y, unsafe_idx).astype(int)


def analyse(scored: Scored, y: np.ndarray, target_precision: float | None = None,
            target_recall: float | None = None) -> dict:
    """Multi-class summary, and for a classifier with unsafe labels the binary moderation view:
    ROC-AUC, average precision, precision/recall at the threshold in force and the thresholds
    that meet the targets (``None`` where no threshold meets one)."""
    names = scored.label_set.label_names
    summary = metrics.classification_summary(y, scored.probs.argmax(axis=1), names)
    summary["top_label_ece"] = metrics.top_label_ece(scored.probs, y)
    positives = binary_view(scored, y)
    if positives is not None:
        s = scored.unsafe
        binary = {
            "unsafe_labels": list(scored.label_set.unsafe),
            "positives": int(positives.sum()), "negatives": int(len(positives) - positives.sum()),
            "roc_auc": metrics.roc_auc(positives, s),
            "average_precision": metrics.average_precision(positives, s),
            "at_current_threshold": metrics.at_threshold(positives, s, scored.threshold),
        }
        if target_precision is not None:
            binary["for_target_precision"] = {
                "target": target_precision,
                "result": metrics.threshold_for_precision(positives, s, target_precision)}
        if target_recall is not None:
            binary["for_target_recall"] = {
                "target": target_recall, "result": metrics.threshold_for_recall(positives, s, target_recall)}
        summary["binary"] = binary
    return summary


def rank_key(summary: dict) -> tuple[float, float]:
    """How variants are ranked: macro-F1, then ROC-AUC of the unsafe score (when there is one)."""
    auc = (summary.get("binary") or {}).get("roc_auc")
    return summary["macro"]["f1"], -1.0 if auc is None else auc
