"""Temperature fitting reduces calibration error on a set made over-confident on purpose."""

import numpy as np
import pytest

from evaluation.temperature import calibrate, fit_temperature, nll, softmax_rows


def _miscalibrated(overconfidence: float, n: int = 3000, seed: int = 0):
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(size=(n, 3)) * 1.5
    probs = softmax_rows(true_logits)
    y = np.array([rng.choice(3, p=p) for p in probs])  # labels drawn from the true probabilities
    return true_logits * overconfidence, y


@pytest.mark.parametrize("overconfidence", [4.0, 0.3])
def test_fitted_temperature_undoes_the_distortion_and_cuts_ece(overconfidence):
    logits, y = _miscalibrated(overconfidence)
    result = calibrate(logits, y)
    assert result["temperature"] == pytest.approx(overconfidence, rel=0.15)
    assert result["ece_after"] < 0.03 < result["ece_before"]
    assert result["nll_after"] < result["nll_before"]


def test_fit_is_the_nll_minimum_and_keeps_the_top_label():
    logits, y = _miscalibrated(2.0, n=500, seed=1)
    t = fit_temperature(logits, y)
    assert nll(logits, y, t) <= min(nll(logits, y, t * 0.97), nll(logits, y, t * 1.03))
    assert (softmax_rows(logits / t).argmax(1) == logits.argmax(1)).all()
