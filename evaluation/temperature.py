"""Fitting a classifier's calibration temperature on labelled logits (temperature scaling).

One number per classifier: the ``T`` minimising the negative log-likelihood of the true labels
under ``softmax(logits / T)``. It never changes the top label, so accuracy stays as it is; the
scores (and so the thresholds that reach a precision or recall) do change.

The fit uses a fixed 70 % of the images (stratified by label) and reports ECE and NLL before
and after on the other 30 %, so "after" is not flattered by fitting and measuring on the same
images. A fit refuses to return a temperature it cannot vouch for: too few images, or an
optimum at the search bound (labels separated perfectly, so sharper is always "better").
"""

from __future__ import annotations

import math

import numpy as np

from classifiers.calibration import MAX_TEMPERATURE, MIN_TEMPERATURE
from classifiers.scoring import softmax
from evaluation.dataset import DatasetError
from evaluation.metrics import top_label_ece

GOLDEN = (math.sqrt(5) - 1) / 2
MIN_CALIBRATION_SAMPLES = 50  # below this the held-out 30 % says almost nothing
HOLDOUT_FRACTION = 0.3
BOUND_MARGIN = 1.01  # a fit within 1 % of a search bound is "at the bound"


class CalibrationError(DatasetError):
    """The images cannot support a trustworthy temperature; no calibration file is written."""


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``, with the service's own ``softmax``."""
    return np.apply_along_axis(softmax, 1, np.asarray(logits, float) / temperature)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the true labels at ``temperature``."""
    scaled = np.asarray(logits, float) / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
    return float(np.mean(log_z - scaled[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, y: np.ndarray, iterations: int = 80) -> float:
    """The NLL-optimal temperature in [MIN_TEMPERATURE, MAX_TEMPERATURE], by golden-section
    search over log T.

    The NLL is convex in 1/T, so it has one minimum along log T and the search finds it (or
    ends at a bound when the minimum lies beyond it).
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


def holdout_split(y: np.ndarray, fraction: float = HOLDOUT_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, held-out indices): ``fraction`` of each label held out, the same every run."""
    y = np.asarray(y, int)
    rng = np.random.default_rng(0)
    held = np.zeros(len(y), bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        held[members[: round(len(members) * fraction)]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def calibrate(logits: np.ndarray, y: np.ndarray) -> dict:
    """Fit a temperature on 70 % of the images; ECE and NLL before/after on the other 30 %.

    Returns the calibration file's entry. Raises ``CalibrationError`` when there are fewer
    than ``MIN_CALIBRATION_SAMPLES`` images or the optimum lies at a search bound.
    """
    logits, y = np.asarray(logits, float), np.asarray(y, int)
    if len(y) < MIN_CALIBRATION_SAMPLES:
        raise CalibrationError(
            f"--calibrate needs at least {MIN_CALIBRATION_SAMPLES} scored images (70 % to fit the "
            f"temperature, 30 % to check it), got {len(y)}; no calibration file written")
    fit, held = holdout_split(y)
    t = fit_temperature(logits[fit], y[fit])
    if not MIN_TEMPERATURE * BOUND_MARGIN < t < MAX_TEMPERATURE / BOUND_MARGIN:
        raise CalibrationError(
            f"the fitted temperature ({t:.3g}) is at the search bound "
            f"[{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]: on these images the labels are separated "
            "so cleanly that ever more extreme scores always fit better, and the service would "
            "answer (nearly) 0 or 1 for every image. Calibrate on more images, including hard and "
            "borderline ones; no calibration file written")
    logits_held, y_held = logits[held], y[held]
    return {
        "temperature": round(t, 6),
        "ece_before": top_label_ece(probabilities(logits_held), y_held),
        "ece_after": top_label_ece(probabilities(logits_held, t), y_held),
        "nll_before": nll(logits_held, y_held, 1.0), "nll_after": nll(logits_held, y_held, t),
        "samples": len(y), "fit_samples": len(fit), "holdout_samples": len(held),
        "measured_on": "held-out",
    }
