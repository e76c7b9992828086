import math

import pytest
import torch

from model import build_model
from model.losses import (
    LossConfig,
    MultiTaskLoss,
    age_target_distribution,
    ciou_loss,
    focal_heatmap_loss,
    scene_targets,
)


def _scene_batch():
    boxes = torch.tensor([[[16.0, 24.0, 48.0, 88.0], [0, 0, 0, 0]], [[100.0, 40.0, 140.0, 120.0], [8.0, 8.0, 40.0, 72.0]]])
    return {
        "images": torch.rand(2, 3, 160, 160),
        "boxes": boxes,
        "box_mask": torch.tensor([[True, False], [True, True]]),
        "gender": torch.tensor([[1.0, -1.0], [0.0, -1.0]]),
        "age": torch.tensor([[30.0, -1.0], [-1.0, -1.0]]),
        "age_group": torch.tensor([[-1, -1], [2, -1]]),
        "has_boxes": torch.tensor([True, True]),
    }


def test_scene_targets_put_exact_peaks_at_centers():
    target = scene_targets(_scene_batch(), 20, 20, stride=8)
    heat = target["heatmap"]
    assert heat.shape == (2, 1, 20, 20)
    assert heat[0, 0, 7, 4] == 1.0  # center (32, 56) / 8 -> cell (4, 7)
    assert (heat[0] == 1.0).sum() == 1 and (heat[1] == 1.0).sum() == 2
    assert target["offset"][0, 0].tolist() == pytest.approx([0.0, 0.0])
    assert target["valid"].tolist() == [[True, False], [True, True]]


def test_ciou_is_zero_for_identical_boxes_and_grows_with_distance():
    box = torch.tensor([[10.0, 10.0, 50.0, 90.0]])
    assert ciou_loss(box, box).item() == pytest.approx(0.0, abs=1e-5)
    near = ciou_loss(box + 5, box).item()
    far = ciou_loss(box + 30, box).item()
    disjoint = ciou_loss(box + 100, box).item()
    assert 0 < near < far < disjoint and disjoint > 1.0


def test_focal_loss_prefers_the_right_heatmap():
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 3, 3] = 1.0
    good = torch.full((1, 1, 8, 8), -6.0)
    good[0, 0, 3, 3] = 6.0
    bad = -good
    mask = torch.tensor([True])
    assert focal_heatmap_loss(good, target, mask) < 0.01 < focal_heatmap_loss(bad, target, mask)
    assert focal_heatmap_loss(bad, target, torch.tensor([False])).item() == 0.0  # unlabelled image: no loss


def test_age_distribution_exact_group_and_missing():
    dist = age_target_distribution(torch.tensor([30.0, -1.0, -1.0]), torch.tensor([-1, 1, -1]), sigma=2.0)
    assert dist[0].sum().item() == pytest.approx(1.0) and dist[0].argmax().item() == 30
    assert (dist[1][16:31] > 0).all() and dist[1][:16].sum() == 0 and dist[1][31:].sum() == 0
    assert dist[1].sum().item() == pytest.approx(1.0)
    assert dist[2].sum().item() == 0.0
    one_hot = age_target_distribution(torch.tensor([7.0]), torch.tensor([-1]), sigma=0.0)
    assert one_hot[0, 7] == 1.0 and one_hot.sum() == 1.0


def test_attribute_terms_ignore_unlabelled_rows():
    loss = MultiTaskLoss()
    logits = torch.tensor([5.0, -5.0, 100.0])
    terms = loss.attribute_terms(logits, torch.zeros(3, 101), torch.tensor([1.0, 0.0, -1.0]),
                                 torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([-1, -1, -1]))
    assert terms["gender"].item() == pytest.approx(math.log1p(math.exp(-5.0)), rel=1e-4)  # the 100-logit row is unlabelled
    assert terms["age"].item() == 0.0 and terms["age_l1"].item() == 0.0


def test_multitask_loss_scene_and_crop_give_all_terms_and_gradients():
    model = build_model().train()
    loss = MultiTaskLoss(LossConfig())
    total, terms = loss(model(_scene_batch()["images"]), _scene_batch())
    assert set(terms) == {"heatmap", "box", "offset", "gender", "age", "age_l1"}
    assert all(torch.isfinite(v) for v in terms.values()) and total > 0
    total.backward()
    crop_batch = {"images": torch.rand(3, 3, 112, 112), "gender": torch.tensor([1.0, 0.0, -1.0]),
                  "age": torch.tensor([20.0, -1.0, 70.0]), "age_group": torch.tensor([-1, 3, -1])}
    total_crop, crop_terms = loss(model(crop_batch["images"], mode="crop"), crop_batch)
    assert set(crop_terms) == {"gender", "age", "age_l1"} and torch.isfinite(total_crop)


def test_loss_weights_are_validated():
    with pytest.raises(ValueError):
        LossConfig(box=-1.0)
    with pytest.raises(ValueError):
        LossConfig.model_validate({"boxx": 1.0})
