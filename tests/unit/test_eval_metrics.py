"""Evaluation metrics against values worked out by hand."""

import numpy as np
import pytest

from evaluation import metrics


def test_confusion_matrix_and_per_class_scores():
    summary = metrics.classification_summary(
        np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 2, 0]), ["a", "b", "c"])
    assert summary["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert summary["accuracy"] == pytest.approx(4 / 6)
    a, b, c = (summary["per_class"][n] for n in "abc")
    assert (a["precision"], a["recall"], a["f1"]) == pytest.approx((1 / 2, 1 / 2, 1 / 2))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((1.0, 1 / 2, 2 / 3))
    assert summary["macro"]["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert summary["macro"]["precision"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)


def test_a_label_without_images_is_left_out_of_macro_and_never_predicted_scores_zero():
    summary = metrics.classification_summary(np.array([0, 0, 1]), np.array([0, 0, 0]), ["x", "y", "z"])
    assert summary["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert summary["per_class"]["z"]["support"] == 0
    assert summary["macro"]["recall"] == pytest.approx(0.5)  # (1 + 0) / 2: z has no images


def test_roc_auc_counts_pairs_and_ties_half():
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    assert metrics.roc_auc([1, 1], [0.2, 0.3]) is None
    fpr, tpr, thresholds = metrics.roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert list(thresholds) == [0.8, 0.4, 0.35, 0.1]
    assert list(tpr) == [0.5, 0.5, 1.0, 1.0] and list(fpr) == [0.0, 0.5, 0.5, 1.0]


Y = np.array([1, 0, 1, 1, 0])
S = np.array([0.9, 0.8, 0.7, 0.6, 0.2])


def test_pr_curve_and_average_precision():
    precision, recall, thresholds = metrics.pr_curve(Y, S)
    assert list(thresholds) == [0.9, 0.8, 0.7, 0.6, 0.2]
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 3 / 4, 3 / 5])
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3, 1, 1])
    assert metrics.average_precision(Y, S) == pytest.approx(1 / 3 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 4)


def test_threshold_for_target_precision_takes_the_most_recall():
    hit = metrics.threshold_for_precision(Y, S, 0.7)
    assert (hit["threshold"], hit["precision"], hit["recall"], hit["flagged"]) == (0.6, 0.75, 1.0, 4)
    assert metrics.threshold_for_precision(Y, S, 0.8)["threshold"] == 0.9
    assert metrics.threshold_for_precision(np.array([0, 1]), np.array([0.9, 0.1]), 0.9) is None


def test_threshold_for_target_recall_takes_the_fewest_flags():
    hit = metrics.threshold_for_recall(Y, S, 0.6)
    assert hit["threshold"] == 0.7 and hit["precision"] == pytest.approx(2 / 3)
    assert metrics.threshold_for_recall(Y, S, 1.0)["threshold"] == 0.6
    assert metrics.threshold_for_recall(np.array([0, 0]), np.array([0.1, 0.2]), 0.5) is None


def test_flagging_is_score_at_or_above_threshold_like_the_service():
    point = metrics.at_threshold(Y, S, 0.7)
    assert point["flagged"] == 3 and point["false_positive_rate"] == 0.5
    assert metrics.at_threshold(Y, S, 0.95) == {"threshold": 0.95, "precision": 0.0, "recall": 0.0,
                                                 "false_positive_rate": 0.0, "flagged": 0}


def test_expected_calibration_error():
    ece = metrics.expected_calibration_error([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1], bins=10)
    assert ece == pytest.approx((2 * 0.4 + 2 * 0.4) / 4)
    assert metrics.expected_calibration_error([1.0, 0.0], [1, 0]) == pytest.approx(0.0)
