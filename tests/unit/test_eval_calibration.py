"""Temperature fitting: undoes a known distortion, is judged on images it did not see, and
refuses temperatures it cannot vouch for (too few images, optimum at the search bound)."""

import numpy as np
import pytest

from classifiers.calibration import MIN_TEMPERATURE
from classifiers.scoring import softmax
from evaluation.temperature import (
    MIN_CALIBRATION_SAMPLES,
    CalibrationError,
    calibrate,
    fit_temperature,
    holdout_split,
    nll,
    probabilities,
)


def _miscalibrated(overconfidence: float, n: int = 3000, seed: int = 0):
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(size=(n, 3)) * 1.5
    probs = probabilities(true_logits)
    y = np.array([rng.choice(3, p=p) for p in probs])  # labels drawn from the true probabilities
    return true_logits * overconfidence, y


@pytest.mark.parametrize("overconfidence", [4.0, 0.3])
def test_fitted_temperature_undoes_the_distortion_and_cuts_held_out_ece(overconfidence):
    logits, y = _miscalibrated(overconfidence)
    result = calibrate(logits, y)
    assert result["temperature"] == pytest.approx(overconfidence, rel=0.15)
    assert result["fit_samples"] + result["holdout_samples"] == result["samples"] == 3000
    assert result["holdout_samples"] == pytest.approx(900, abs=2)  # 30 % of each label, rounded
    assert result["ece_after"] < 0.04 < result["ece_before"]  # on the 900 images the fit did not see
    assert result["nll_after"] < result["nll_before"]


def test_fit_is_the_nll_minimum_and_keeps_the_top_label():
    logits, y = _miscalibrated(2.0, n=500, seed=1)
    t = fit_temperature(logits, y)
    assert nll(logits, y, t) <= min(nll(logits, y, t * 0.97), nll(logits, y, t * 1.03))
    assert (probabilities(logits / t).argmax(1) == logits.argmax(1)).all()


def test_probabilities_are_the_service_softmax_row_by_row():
    logits = np.array([[1.0, 2.0, 3.0], [50.0, -50.0, 0.0]])
    for row, expected in zip(probabilities(logits, 2.0), logits / 2.0):
        np.testing.assert_allclose(row, softmax(expected))


def test_holdout_is_deterministic_stratified_and_disjoint():
    y = np.array([0] * 70 + [1] * 30)
    fit, held = holdout_split(y)
    assert np.array_equal(held, holdout_split(y)[1])
    assert sorted([*fit, *held]) == list(range(100))
    assert (np.bincount(y[held]).tolist(), len(fit)) == ([21, 9], 70)


def test_separable_labels_put_the_optimum_at_the_bound_and_are_refused():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=80)
    logits = np.where(np.eye(2)[y] == 1, 1.0, -1.0) + rng.normal(scale=0.1, size=(80, 2))
    assert fit_temperature(logits, y) < MIN_TEMPERATURE * 1.01  # sharper always fits better
    with pytest.raises(CalibrationError, match="search bound"):
        calibrate(logits, y)


def test_too_few_images_are_refused():
    logits, y = _miscalibrated(2.0, n=MIN_CALIBRATION_SAMPLES - 1)
    with pytest.raises(CalibrationError, match=f"at least {MIN_CALIBRATION_SAMPLES}"):
        calibrate(logits, y)
    assert calibrate(*_miscalibrated(2.0, n=MIN_CALIBRATION_SAMPLES))["samples"] == MIN_CALIBRATION_SAMPLES
