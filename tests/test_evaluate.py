import numpy as np
import pytest
import torch

from mouaadnet.data.synthetic import synthetic_crops, synthetic_scenes
from mouaadnet.evaluation.evaluate import (
    EvalResult,
    box_iou,
    evaluate_crop,
    evaluate_scene,
    flat_metrics,
    match_attributes,
    summary_score,
)


def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    assert box_iou(a, b)[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0], abs=1e-6)
    assert box_iou(a, np.zeros((0, 4))).shape == (1, 0)


def test_match_attributes_uses_threshold_and_iou():
    gt = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]], np.float32)
    det = np.array([[1, 1, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]], np.float32)
    scores = np.array([0.9, 0.1, 0.8])
    assert match_attributes(gt, det, scores, 0.3).tolist() == [0, -1, 2]


class OracleScene(torch.nn.Module):
    """Emits the head tensors that decode exactly to the ground truth of a known batch (evaluation test)."""

    def __init__(self):
        super().__init__()
        self.batch = None

    def forward(self, images, mode="scene"):
        from model.losses import scene_targets

        n, _, h, w = images.shape
        hs, ws = h // 8, w // 8
        target = scene_targets(self.batch, hs, ws)
        heat = torch.full((n, 1, hs, ws), -9.0)
        size = torch.zeros(n, 2, hs, ws)
        offset = torch.zeros(n, 2, hs, ws)
        gender = torch.zeros(n, 1, hs, ws)
        age = torch.full((n, 101, hs, ws), -50.0)
        boxes = self.batch["boxes"]
        for i, j in zip(*torch.nonzero(target["valid"], as_tuple=True)):
            x, y = target["cell"][i, j].long().tolist()
            heat[i, 0, y, x] = 9.0
            offset[i, :, y, x] = target["offset"][i, j]
            wh = (boxes[i, j, 2:] - boxes[i, j, :2]) / 8
            size[i, :, y, x] = torch.log(wh)
            gender[i, 0, y, x] = 9.0 if self.batch["gender"][i, j] == 1 else -9.0
            age[i, int(self.batch["age"][i, j].round()), y, x] = 50.0
        return {"heatmap": heat, "size": size, "offset": offset, "gender": gender, "age": age}


def test_evaluate_scene_with_an_oracle_gives_perfect_metrics(monkeypatch):
    from mouaadnet.data.dataset import SceneDataset, collate_scene

    samples = synthetic_scenes(6, seed=3, size=128)
    batch = collate_scene([SceneDataset(samples, 128, augment=False)[i] for i in range(6)])
    oracle = OracleScene()
    oracle.batch = batch
    metrics, details = evaluate_scene(oracle, samples, 128, batch_size=6)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["gender_accuracy"] == 1.0 and metrics["age_mae"] < 0.01
    assert metrics["attr_matched_fraction"] == 1.0
    assert len(details["pr_curve"]["precision"]) == 101


def test_evaluate_crop_counts_and_keys():
    from model import build_model

    model = build_model().eval()
    metrics, _ = evaluate_crop(model, synthetic_crops(10, seed=1, size=64), 64, batch_size=4)
    assert metrics["gender_count"] == 10 and metrics["age_count"] == 10
    assert 0.0 <= metrics["gender_accuracy"] <= 1.0 and metrics["age_mae"] >= 0


def test_summary_score_averages_headline_metrics():
    results = [EvalResult("a", "scene", {"AP50": 0.8, "gender_accuracy": float("nan")}),
               EvalResult("b", "crop", {"gender_accuracy": 0.9, "age_acc_within_5": 0.4, "age_group_accuracy": 0.5})]
    assert summary_score(results) == pytest.approx((0.8 + 0.9 + 0.4 + 0.5) / 4)
    flat = flat_metrics(results)
    assert flat["val/a/AP50"] == 0.8 and "val/a/gender_accuracy" not in flat and "val/score" in flat


def test_evaluate_scene_reads_age_groups_only_where_no_exact_age(monkeypatch):
    from mouaadnet.data.dataset import SceneDataset, collate_scene
    from mouaadnet.data.types import UNKNOWN

    samples = synthetic_scenes(6, seed=3, size=128)
    batch = collate_scene([SceneDataset(samples, 128, augment=False)[i] for i in range(6)])
    oracle = OracleScene()
    oracle.batch = batch  # predicts the exact ages, so their age groups are right
    metrics, _ = evaluate_scene(oracle, samples, 128, batch_size=6)
    assert "age_group_accuracy" not in metrics  # exact ages are measured as ages
    for sample in samples:  # PETA-like people: an age group, no exact age
        sample.age = np.full_like(sample.age, UNKNOWN)
    metrics, _ = evaluate_scene(oracle, samples, 128, batch_size=6)
    assert metrics["age_group_accuracy"] == 1.0 and metrics["age_group_count"] == int(batch["box_mask"].sum())
    assert metrics["age_count"] == 0 and metrics["attr_matched_fraction"] == 1.0


def test_box_fit_scores_the_box_a_user_sees_per_person_and_size():
    from mouaadnet.evaluation.metrics import box_fit

    people = np.array([[0, 0, 10, 20], [100, 100, 150, 200], [300, 0, 310, 10]], np.float32)  # small, large, small
    dets = np.array([[0, 0, 10, 20], [100, 100, 150, 150], [100, 100, 150, 200]], np.float32)
    scores = np.array([0.9, 0.8, 0.3])  # the large person's better box scores lower: the user sees the half box
    fit = box_fit([{"boxes": dets, "scores": scores}], [{"boxes": people}])
    assert fit["box_fit_mean_iou"] == pytest.approx((1.0 + 0.5 + 0.0) / 3, abs=1e-6)  # nobody boxes the third
    assert fit["box_fit_at75"] == pytest.approx(1 / 3)
    assert fit["box_fit_mean_iou_small"] == pytest.approx(0.5, abs=1e-6) and fit["box_fit_count_small"] == 2
    assert fit["box_fit_mean_iou_large"] == pytest.approx(0.5, abs=1e-6) and fit["box_fit_count_large"] == 1
    assert np.isnan(fit["box_fit_mean_iou_medium"]) and fit["box_fit_count_medium"] == 0
    assert np.isnan(box_fit([{"boxes": dets, "scores": scores}], [{"boxes": np.zeros((0, 4))}])["box_fit_mean_iou"])
