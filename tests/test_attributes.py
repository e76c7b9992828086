import pytest
import torch

from model.preprocess import PAD_VALUE
from mouaadnet.evaluation.attributes import classify_crops, person_crop, second_pass


class HalfReader(torch.nn.Module):
    """Crop mode: P(female) = mean of the left half's red channel, age = 100 x the right half's (asymmetric on
    purpose, so a mirror image gives other answers)."""

    def forward(self, images, mode="crop"):
        assert mode == "crop"
        w = images.shape[-1]
        left = images[:, 0, :, : w // 2].mean((1, 2)).clamp(1e-4, 1 - 1e-4)
        right = images[:, 0, :, w // 2 :].mean((1, 2))
        age = torch.full((len(images), 101), -50.0)
        age[torch.arange(len(images)), (right * 100).round().long()] = 50.0
        return {"gender": torch.logit(left), "age": age}


def test_person_crop_letterboxes_the_box_region_like_crop_mode():
    image = torch.zeros(3, 100, 200)
    image[:, 20:80, 50:70] = 1.0  # a 20 x 60 white person
    crop = person_crop(image, torch.tensor([50.0, 20.0, 70.0, 80.0]), 60)
    assert crop.shape == (3, 60, 60)
    assert torch.allclose(crop[:, :, 25:35], torch.ones(3, 60, 10), atol=1e-5)  # the person, centred, full height
    pad = torch.full((3, 60, 20), PAD_VALUE / 255.0)
    assert torch.allclose(crop[:, :, :20], pad) and torch.allclose(crop[:, :, 40:], pad)  # grey either side


def test_person_crop_clamps_boxes_that_leave_the_image():
    image = torch.rand(3, 50, 50)
    crop = person_crop(image, torch.tensor([-30.0, -10.0, 20.0, 80.0]), 32)
    assert crop.shape == (3, 32, 32) and torch.isfinite(crop).all()


def test_flip_averages_a_crop_with_its_mirror_image():
    crops = torch.zeros(2, 3, 8, 8)
    crops[0, 0, :, :4] = 0.8  # left half bright: female-looking to HalfReader, age 0
    crops[1, 0, :, 4:] = 0.6  # right half: age 60
    plain = classify_crops(HalfReader(), crops)
    flipped = classify_crops(HalfReader(), crops, flip=True)
    mirror = classify_crops(HalfReader(), crops.flip(-1))
    assert plain["gender"][0] == pytest.approx(0.8, abs=1e-4) and plain["age"][1] == pytest.approx(60, abs=0.1)
    assert torch.allclose(flipped["gender"], (plain["gender"] + mirror["gender"]) / 2)
    assert torch.allclose(flipped["age"], (plain["age"] + mirror["age"]) / 2)
    assert flipped["age"][1] == pytest.approx(30, abs=0.1)


def test_second_pass_replaces_attributes_of_found_people_only():
    images = torch.zeros(1, 3, 64, 64)
    images[0, 0, 10:50, 10:30] = 0.7  # a square person: its crop reads P(female) 0.7 (left half), age 40 (right)
    images[0, 0, 10:50, 30:50] = 0.4
    decoded = {"boxes": torch.tensor([[[10.0, 10.0, 50.0, 50.0], [40.0, 40.0, 50.0, 60.0]]]),
               "scores": torch.tensor([[0.9, 0.1]]), "gender": torch.tensor([[0.1, 0.2]]),
               "age": torch.tensor([[5.0, 6.0]])}
    out, people = second_pass(HalfReader(), images, decoded, crop_size=32, threshold=0.3)
    assert people == 1
    assert out["gender"][0, 0] == pytest.approx(0.7, abs=0.02) and out["age"][0, 0] == pytest.approx(40, abs=2)
    assert out["gender"][0, 1] == 0.2 and out["age"][0, 1] == 6.0  # below the threshold: the scene head's answer
    assert decoded["gender"][0, 0] == 0.1  # the input is not modified
    none, count = second_pass(HalfReader(), images, {**decoded, "scores": torch.zeros(1, 2)}, 32, 0.3)
    assert count == 0 and torch.equal(none["gender"], decoded["gender"])
