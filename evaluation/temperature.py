"""Fitting a classifier's calibration temperature on labelled logits (temperature scaling).

One number per classifier: the ``T`` minimising the negative log-likelihood of the true labels
under ``softmax(logits / T)``. It never changes the top label, so accuracy and the ranking of
unsafe scores stay as they are; only what the scores mean changes.
"""

from __future__ import annotations

import math

import numpy as np

from classifiers.calibration import MAX_TEMPERATURE, MIN_TEMPERATURE
from evaluation.metrics import expected_calibration_error

GOLDEN = (math.sqrt(5) - 1) / 2


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the true labels at ``temperature``."""
    scaled = np.asarray(logits, float) / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
    return float(np.mean(log_z - scaled[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, y: np.ndarray, iterations: int = 80) -> float:
    """The NLL-optimal temperature, by golden-section search over log T.

    The NLL is convex in 1/T, so it has one minimum along log T and the search finds it.
    """
    lo, hi = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    a, b = hi - GOLDEN * (hi - lo), lo + GOLDEN * (hi - lo)
    fa, fb = nll(logits, y, math.exp(a)), nll(logits, y, math.exp(b))
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - GOLDEN * (hi - lo)
            fa = nll(logits, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + GOLDEN * (hi - lo)
            fb = nll(logits, y, math.exp(b))
    return float(math.exp((lo + hi) / 2))


def top_label_ece(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """ECE of the top label's probability at ``temperature``."""
    probs = softmax_rows(np.asarray(logits, float) / temperature)
    return expected_calibration_error(probs.max(axis=1), probs.argmax(axis=1) == y)


def calibrate(logits: np.ndarray, y: np.ndarray) -> dict:
    """Fit a temperature; return it with ECE and NLL before and after (the file's entry)."""
    y = np.asarray(y, int)
    t = fit_temperature(logits, y)
    return {
        "temperature": round(t, 6),
        "ece_before": top_label_ece(logits, y), "ece_after": top_label_ece(logits, y, t),
        "nll_before": nll(logits, y, 1.0), "nll_after": nll(logits, y, t),
        "samples": len(y),
    }
