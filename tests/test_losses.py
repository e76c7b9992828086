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


# ---- distillation from a teacher's soft labels (loss.gender_distill / loss.age_distill) ----------------------


def _crop_batch(teacher: bool = True) -> dict[str, torch.Tensor]:
    batch = {"gender": torch.tensor([1.0, 0.0, -1.0, 1.0]), "age": torch.tensor([30.0, -1.0, 8.0, -1.0]),
             "age_group": torch.tensor([-1, 5, -1, -1])}
    if teacher:  # the third crop: the teacher failed on it
        batch.update(teacher_gender=torch.tensor([0.2, 0.7, -1.0, 0.9]),
                     teacher_age=torch.tensor([50.0, 33.0, -1.0, 61.0]))
    return batch


def _crop_outputs(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"gender": torch.randn(4, generator=generator, requires_grad=True),
            "age": torch.randn(4, 101, generator=generator, requires_grad=True)}


def test_distill_zero_is_bit_identical_to_the_loss_without_a_teacher():
    reference = _crop_outputs()
    total_ref, terms_ref = MultiTaskLoss(LossConfig())(reference, _crop_batch(teacher=False))
    total_ref.backward()
    for cfg in (LossConfig(), LossConfig(gender_distill=0.0, age_distill=0.0, distill_age_sigma=9.0)):
        outputs = _crop_outputs()
        total, terms = MultiTaskLoss(cfg)(outputs, _crop_batch(teacher=True))
        total.backward()
        assert torch.equal(total, total_ref) and terms.keys() == terms_ref.keys()
        assert all(torch.equal(terms[k], terms_ref[k]) for k in terms)
        assert torch.equal(outputs["gender"].grad, reference["gender"].grad)
        assert torch.equal(outputs["age"].grad, reference["age"].grad)


def test_distill_terms_mask_the_faces_the_teacher_failed_on():
    cfg = LossConfig(gender_distill=1.0, age_distill=0.5)
    outputs = {"gender": torch.zeros(4), "age": torch.zeros(4, 101)}
    total, terms = MultiTaskLoss(cfg)(outputs, _crop_batch())
    assert terms["gender_distill"].item() == pytest.approx(math.log(2))  # BCE of p=0.5 against any soft target
    assert terms["age_distill"].item() == pytest.approx(math.log(101), rel=1e-5)  # uniform vs a normalised target
    _, plain = MultiTaskLoss(LossConfig())(outputs, _crop_batch())
    extra = 1.0 * terms["gender_distill"] + 0.5 * terms["age_distill"]
    assert total.item() == pytest.approx(sum(LossConfig().model_dump()[k] * v for k, v in plain.items()) + extra)
    _, none = MultiTaskLoss(cfg)(outputs, {**_crop_batch(), "teacher_gender": torch.full((4,), -1.0),
                                           "teacher_age": torch.full((4,), -1.0)})
    assert none["gender_distill"].item() == 0.0 and none["age_distill"].item() == 0.0


def test_distill_moves_the_output_toward_the_teacher():
    """Only the distillation terms on: P(female) goes to the teacher's, the expected age to the teacher's age."""
    from model.decode import expected_age

    cfg = LossConfig(gender=0.0, age=0.0, age_l1=0.0, gender_distill=1.0, age_distill=1.0)
    outputs = {"gender": torch.zeros(4, requires_grad=True), "age": torch.zeros(4, 101, requires_grad=True)}
    optimizer = torch.optim.Adam(outputs.values(), lr=0.1)
    loss = MultiTaskLoss(cfg)
    for _ in range(300):
        total, _ = loss(outputs, _crop_batch())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    answered = [0, 1, 3]
    p_female = torch.sigmoid(outputs["gender"].detach())[answered]
    assert p_female.tolist() == pytest.approx([0.2, 0.7, 0.9], abs=0.02)
    ages = expected_age(outputs["age"].detach())[answered]
    assert ages.tolist() == pytest.approx([50.0, 33.0, 61.0], abs=1.0)
    assert outputs["gender"].detach()[2] == 0.0  # the failed face got no gradient
