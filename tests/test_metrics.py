"""Tests for mouaadnet.evaluation.metrics on hand-made inputs with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mouaadnet.evaluation.metrics import (
    age_group_metrics,
    age_metrics,
    age_to_group,
    detection_metrics,
    gender_metrics,
)

GT_A = [0.0, 0.0, 100.0, 100.0]
GT_B = [200.0, 200.0, 300.0, 300.0]
FAR_AWAY = [400.0, 400.0, 500.0, 500.0]
# COCO interpolates precision at 101 recall points; reaching recall 0.5 at precision 1 covers 0.00..0.50.
HALF_RECALL_AP = 51 / 101


def _pred(boxes: list[list[float]], scores: list[float]) -> dict:
    return {"boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4), "scores": np.array(scores, np.float32)}


def _gt(boxes: list[list[float]]) -> dict:
    return {"boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4)}


# ----------------------------------------------------------------------------------------------- detection


def test_perfect_detections_give_ap_one() -> None:
    gts = [_gt([GT_A, GT_B]), _gt([GT_A])]
    preds = [_pred([GT_A, GT_B], [0.9, 0.8]), _pred([GT_A], [0.7])]
    result = detection_metrics(preds, gts)
    assert result["AP50"] == pytest.approx(1.0)
    assert result["AP50_95"] == pytest.approx(1.0)
    assert result["AR100"] == pytest.approx(1.0)
    assert result["num_gt"] == 3 and result["num_detections"] == 3


def test_one_of_two_gt_missed_gives_51_over_101() -> None:
    result = detection_metrics([_pred([GT_A], [0.9])], [_gt([GT_A, GT_B])])
    assert result["AP50"] == pytest.approx(HALF_RECALL_AP)  # 0.50495..., not 0.5
    assert result["AP50_95"] == pytest.approx(HALF_RECALL_AP)
    assert result["AR100"] == pytest.approx(0.5)


def test_false_positive_ranked_first_lowers_ap() -> None:
    gts = [_gt([GT_A])]
    tp_first = detection_metrics([_pred([GT_A, FAR_AWAY], [0.9, 0.8])], gts)
    fp_first = detection_metrics([_pred([FAR_AWAY, GT_A], [0.9, 0.8])], gts)
    assert tp_first["AP50"] == pytest.approx(1.0)
    # The only TP comes at rank 2: precision 1/2 at recall 1, which interpolation carries to every recall point.
    assert fp_first["AP50"] == pytest.approx(0.5)
    assert fp_first["AR100"] == pytest.approx(1.0)


def test_iou_062_counts_at_050_not_at_075() -> None:
    # Box [0,0,62,100] inside GT_A: IoU = 6200 / 10000 = 0.62 (clear of the 0.6 threshold's rounding).
    result = detection_metrics([_pred([[0.0, 0.0, 62.0, 100.0]], [0.9])], [_gt([GT_A])])
    assert result["AP50"] == pytest.approx(1.0)
    assert result["AP75"] == pytest.approx(0.0)
    assert result["AP50_95"] == pytest.approx(0.3)  # matched at IoU 0.50, 0.55, 0.60 of the ten thresholds


def test_zero_detections_give_zero() -> None:
    result = detection_metrics([_pred([], [])], [_gt([GT_A])])
    assert result["AP50"] == 0.0
    assert result["AP50_95"] == 0.0
    assert result["AR100"] == 0.0
    assert result["pr_curve"]["precision"] == [0.0] * 101


def test_images_without_gt_or_detections_do_not_change_ap() -> None:
    preds = [_pred([GT_A], [0.9]), _pred([], [])]
    result = detection_metrics(preds, [_gt([GT_A]), _gt([])])
    assert result["AP50"] == pytest.approx(1.0)
    assert result["num_images"] == 2


def test_detection_on_image_without_gt_is_false_positive() -> None:
    preds = [_pred([GT_A], [0.5]), _pred([GT_A], [0.9])]
    result = detection_metrics(preds, [_gt([GT_A]), _gt([])])
    assert result["AP50"] == pytest.approx(0.5)


def test_no_ground_truth_gives_nan_with_reason() -> None:
    result = detection_metrics([_pred([GT_A], [0.9])], [_gt([])])
    assert math.isnan(result["AP50"]) and math.isnan(result["AP50_95"]) and math.isnan(result["AR100"])
    assert "ground-truth" in result["reason"]


def test_pr_curve_shape_and_values() -> None:
    curve = detection_metrics([_pred([GT_A], [0.9])], [_gt([GT_A, GT_B])])["pr_curve"]
    assert len(curve["recall"]) == len(curve["precision"]) == 101
    assert curve["recall"][0] == 0.0 and curve["recall"][-1] == pytest.approx(1.0)
    precision = np.array(curve["precision"])
    assert np.allclose(precision[:51], 1.0) and np.all(precision[51:] == 0.0)  # -1 past max recall became 0


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError):
        detection_metrics([_pred([GT_A], [0.9])], [_gt([GT_A]), _gt([GT_B])])


def test_detection_result_is_json_serialisable() -> None:
    json.dumps(detection_metrics([_pred([GT_A], [0.9])], [_gt([GT_A])]))


# ----------------------------------------------------------------------------------------------- gender


def test_gender_confusion_and_scores() -> None:
    prob_female = [0.9, 0.2, 0.6, 0.4, 0.1, 0.8, 0.99]
    labels = [1, 1, 0, 0, 0, 1, -1]  # last one unknown: ignored even though it is confidently "female"
    result = gender_metrics(prob_female, labels)
    # rows true male/female, cols predicted male/female
    assert result["confusion"] == [[2, 1], [1, 2]]
    assert result["count"] == 6
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["precision_female"] == pytest.approx(2 / 3)
    assert result["recall_female"] == pytest.approx(2 / 3)
    assert result["precision_male"] == pytest.approx(2 / 3)
    assert result["f1_male"] == pytest.approx(2 / 3)


def test_gender_threshold_is_inclusive_and_adjustable() -> None:
    assert gender_metrics([0.5], [1])["accuracy"] == 1.0
    assert gender_metrics([0.5], [1], threshold=0.7)["confusion"] == [[0, 0], [1, 0]]


def test_gender_empty_and_all_unknown() -> None:
    for probs, labels in (([], []), ([0.3, 0.9], [-1, -1])):
        result = gender_metrics(probs, labels)
        assert result["count"] == 0
        assert math.isnan(result["accuracy"]) and math.isnan(result["f1_female"])
        assert result["confusion"] == [[0, 0], [0, 0]]


def test_gender_undefined_precision_is_nan() -> None:
    result = gender_metrics([0.9, 0.8], [1, 1])  # nothing predicted male
    assert math.isnan(result["precision_male"])
    assert result["recall_female"] == 1.0


# ----------------------------------------------------------------------------------------------- age


def test_age_mae_and_tolerances() -> None:
    pred = np.array([20.0, 30.5, 40.4, 50.0, 70.0, 33.0])
    true = np.array([20, 30, 41, 45, 50, -1])
    result = age_metrics(pred, true)
    assert result["count"] == 5
    assert result["mae"] == pytest.approx((0 + 0.5 + 0.6 + 5 + 20) / 5)
    # rounded: 20, 31 (half rounds up), 40, 50, 70 -> errors 0, 1, 1, 5, 20
    assert result["acc_exact"] == pytest.approx(1 / 5)
    assert result["acc_within_1"] == pytest.approx(3 / 5)
    assert result["acc_within_3"] == pytest.approx(3 / 5)
    assert result["acc_within_5"] == pytest.approx(4 / 5)  # error of exactly 5 counts
    assert result["acc_within_10"] == pytest.approx(4 / 5)
    assert result["acc_within_15"] == pytest.approx(4 / 5)


def test_age_rounding_half_goes_up() -> None:
    assert age_metrics([2.5], [3])["acc_exact"] == 1.0  # np.round would give 2
    assert age_metrics([2.49], [2])["acc_exact"] == 1.0
    assert age_metrics([3.5], [3])["acc_exact"] == 0.0


def test_age_empty_gives_nan() -> None:
    result = age_metrics([], [])
    assert result["count"] == 0
    assert math.isnan(result["mae"]) and math.isnan(result["acc_within_5"])


def test_age_accepts_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    result = age_metrics(torch.tensor([10.0, 20.0], requires_grad=True), torch.tensor([10, 25]))
    assert result["mae"] == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("age", "group"),
    [
        (0, 0),
        (15, 0),
        (15.4, 0),
        (15.5, 1),
        (16, 1),
        (30, 1),
        (31, 2),
        (45, 2),
        (46, 3),
        (60, 3),
        (61, 4),
        (100, 4),
        (-3, 0),
        (120, 4),
    ],
)
def test_age_to_group_boundaries(age: float, group: int) -> None:
    assert age_to_group([age]).tolist() == [group]


def test_age_group_metrics() -> None:
    pred_age = [10.0, 15.0, 16.0, 61.0, 59.0, 40.0]
    true_group = [0, 0, 0, 4, 4, -1]  # 16 -> Less30 (wrong), 59 -> Less60 (wrong)
    result = age_group_metrics(pred_age, true_group)
    assert result["count"] == 5
    assert result["accuracy"] == pytest.approx(3 / 5)
    confusion = np.array(result["confusion"])
    assert confusion.shape == (5, 5)
    assert confusion[0, 0] == 2 and confusion[0, 1] == 1 and confusion[4, 4] == 1 and confusion[4, 3] == 1
    assert confusion.sum() == 5


def test_age_group_empty() -> None:
    result = age_group_metrics([], [])
    assert result["count"] == 0 and math.isnan(result["accuracy"])
    json.dumps(result)
