"""Accuracy metrics as pure numpy functions: confusion matrix, P/R/F1, ROC-AUC, PR curve,
threshold search and expected calibration error.

Binary functions take ``y`` (1 = unsafe) and ``s`` (the unsafe score); an image is flagged when
``s >= threshold``, exactly as the service decides.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ECE_BINS = 15


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (a class never predicted has precision 0)."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def classification_summary(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support, their macro averages, confusion matrix.

    Macro averages are over the classes present in ``y_true`` (a label with no images says
    nothing about how well it is recognised).
    """
    cm = confusion_matrix(y_true, y_pred, len(names))
    tp = np.diag(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = support > 0
    return {
        "samples": int(cm.sum()),
        "accuracy": float(tp.sum() / max(1, cm.sum())),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(names)
        },
        "macro": {"precision": float(precision[present].mean()), "recall": float(recall[present].mean()),
                  "f1": float(f1[present].mean())},
        "confusion_matrix": cm.tolist(),
        "labels": list(names),
    }


def roc_auc(y: np.ndarray, s: np.ndarray) -> float | None:
    """Area under the ROC curve (the chance an unsafe image outscores a safe one; ties count
    half); ``None`` when one class is missing."""
    y, s = np.asarray(y, bool), np.asarray(s, float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    start = 0
    for end in range(1, len(s) + 1):  # average ranks over ties
        if end == len(s) or sorted_s[end] != sorted_s[start]:
            ranks[order[start:end]] = (start + end + 1) / 2
            start = end
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, threshold), thresholds descending."""
    y = np.asarray(y, bool)
    thresholds, tp, fp = _counts(y, s)
    return fp / max(1, (~y).sum()), tp / max(1, y.sum()), thresholds


def _counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each distinct score as a threshold (descending), with true/false positives at it."""
    y, s = np.asarray(y, bool), np.asarray(s, float)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_run = np.r_[np.diff(s_sorted) != 0, True]
    tp = np.cumsum(y_sorted)[last_of_run].astype(float)
    fp = np.cumsum(~y_sorted)[last_of_run].astype(float)
    return s_sorted[last_of_run], tp, fp


def pr_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, threshold) for every distinct score as threshold, descending."""
    thresholds, tp, fp = _counts(y, s)
    return tp / (tp + fp), tp / max(1, np.asarray(y, bool).sum()), thresholds


def average_precision(y: np.ndarray, s: np.ndarray) -> float | None:
    """Area under the PR curve as the recall-weighted mean of precision (step-wise, no
    interpolation); ``None`` without unsafe images."""
    if not np.asarray(y, bool).any():
        return None
    precision, recall, _ = pr_curve(y, s)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def at_threshold(y: np.ndarray, s: np.ndarray, threshold: float) -> dict:
    """Precision, recall and false positive rate when flagging ``s >= threshold``."""
    y, flagged = np.asarray(y, bool), np.asarray(s, float) >= threshold
    tp, fp = int((flagged & y).sum()), int((flagged & ~y).sum())
    return {"threshold": float(threshold), "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / max(1, y.sum()), "false_positive_rate": fp / max(1, (~y).sum()),
            "flagged": int(flagged.sum())}


def threshold_for_precision(y: np.ndarray, s: np.ndarray, target: float) -> dict | None:
    """The lowest threshold (most recall) whose precision is at least ``target``; None if none."""
    precision, _, thresholds = pr_curve(y, s)
    ok = np.flatnonzero(precision >= target)
    return at_threshold(y, s, thresholds[ok[-1]]) if len(ok) else None


def threshold_for_recall(y: np.ndarray, s: np.ndarray, target: float) -> dict | None:
    """The highest threshold (fewest flags) whose recall is at least ``target``; None if none."""
    _, recall, thresholds = pr_curve(y, s)
    ok = np.flatnonzero(recall >= target)
    return at_threshold(y, s, thresholds[ok[0]]) if len(ok) else None


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the sample-weighted gap between mean confidence and accuracy over equal-width bins."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.sum() * abs(confidence[members].mean() - correct[members].mean())
    return float(total / max(1, len(confidence)))


def top_label_ece(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top label: its probability against whether it is the true label."""
    probs = np.asarray(probs, float)
    return expected_calibration_error(probs.max(axis=1), probs.argmax(axis=1) == np.asarray(y), bins)
