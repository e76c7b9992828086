import math

import pytest
import torch

from model import decode_crop, decode_scene, expected_age, filter_detections

STRIDE = 8


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _empty_outputs(n=1, h=10, w=12):
    return {
        "heatmap": torch.full((n, 1, h, w), -10.0),
        "size": torch.zeros(n, 2, h, w),
        "offset": torch.zeros(n, 2, h, w),
        "gender": torch.zeros(n, 1, h, w),
        "age": torch.zeros(n, 101, h, w),
    }


def _put_person(out, b, y, x, score, w_px, h_px, off, p_female, age):
    out["heatmap"][b, 0, y, x] = _logit(score)
    out["size"][b, :, y, x] = torch.tensor([math.log(w_px / STRIDE), math.log(h_px / STRIDE)])
    out["offset"][b, :, y, x] = torch.tensor(off)
    out["gender"][b, 0, y, x] = _logit(p_female)
    out["age"][b, :, y, x] = -30.0
    out["age"][b, age, y, x] = 30.0


def test_known_peaks_come_back_exactly():
    out = _empty_outputs(n=2)
    _put_person(out, 0, 3, 4, 0.9, 40, 80, (0.25, 0.5), 0.8, 33)
    _put_person(out, 0, 7, 9, 0.6, 16, 24, (0.0, 0.75), 0.1, 70)
    _put_person(out, 1, 0, 0, 0.7, 8, 8, (0.5, 0.5), 0.5, 5)
    dec = decode_scene(out, k=5, stride=STRIDE)
    assert dec["boxes"].shape == (2, 5, 4) and dec["scores"].shape == (2, 5)
    cx, cy = (4 + 0.25) * STRIDE, (3 + 0.5) * STRIDE
    assert torch.allclose(dec["boxes"][0, 0], torch.tensor([cx - 20, cy - 40, cx + 20, cy + 40]), atol=1e-4)
    assert dec["scores"][0, :2].tolist() == pytest.approx([0.9, 0.6], abs=1e-6)
    assert dec["gender"][0, :2].tolist() == pytest.approx([0.8, 0.1], abs=1e-6)
    assert dec["age"][0, :2].tolist() == pytest.approx([33.0, 70.0], abs=1e-3)
    cx2, cy2 = 9 * STRIDE, (7 + 0.75) * STRIDE
    assert torch.allclose(dec["boxes"][0, 1], torch.tensor([cx2 - 8, cy2 - 12, cx2 + 8, cy2 + 12]), atol=1e-4)
    assert torch.allclose(dec["boxes"][1, 0], torch.tensor([0.0, 0.0, 8.0, 8.0]), atol=1e-4)
    kept = filter_detections(dec, 0.5)
    assert [len(d["scores"]) for d in kept] == [2, 1]


def test_non_peak_neighbours_are_suppressed():
    out = _empty_outputs()
    _put_person(out, 0, 5, 5, 0.9, 16, 16, (0, 0), 0.5, 30)
    out["heatmap"][0, 0, 5, 6] = _logit(0.8)  # shoulder of the same peak
    dec = decode_scene(out, k=3, stride=STRIDE)
    assert dec["scores"][0, 0].item() == pytest.approx(0.9)
    assert dec["scores"][0, 1].item() < 0.01


def test_top_k_keeps_the_k_best_and_ties_are_all_kept():
    out = _empty_outputs(h=20, w=20)
    scores = [0.95, 0.9, 0.9, 0.8, 0.7]
    cells = [(1, 1), (5, 5), (10, 10), (15, 15), (18, 2)]
    for (y, x), s in zip(cells, scores):
        _put_person(out, 0, y, x, s, 16, 16, (0, 0), 0.5, 20)
    dec = decode_scene(out, k=3, stride=STRIDE)
    assert dec["scores"][0].tolist() == pytest.approx([0.95, 0.9, 0.9], abs=1e-6)
    centers = {(round(((b[1] + b[3]) / 2 / STRIDE).item()), round(((b[0] + b[2]) / 2 / STRIDE).item()))
               for b in dec["boxes"][0, 1:]}
    assert centers == {(5, 5), (10, 10)}
    # Two equal adjacent cells are both maxima of their neighbourhoods: both survive, as in CenterNet.
    flat = _empty_outputs()
    flat["heatmap"][0, 0, 4, 4] = flat["heatmap"][0, 0, 4, 5] = _logit(0.7)
    assert (decode_scene(flat, k=4, stride=STRIDE)["scores"][0] > 0.5).sum().item() == 2


def test_k_larger_than_the_map_is_capped():
    dec = decode_scene(_empty_outputs(h=2, w=3), k=100, stride=STRIDE)
    assert dec["scores"].shape == (1, 6)


def test_empty_heatmap_gives_no_detection_above_threshold():
    dec = decode_scene(_empty_outputs(n=3), k=100, stride=STRIDE)
    assert all(len(d["scores"]) == 0 for d in filter_detections(dec, 0.05))


def test_age_expectation_one_hot_and_uniform():
    one_hot = torch.full((3, 101), -1e4)
    for row, age in enumerate((0, 42, 100)):
        one_hot[row, age] = 0.0
    assert expected_age(one_hot).tolist() == pytest.approx([0.0, 42.0, 100.0], abs=1e-4)
    assert expected_age(torch.zeros(2, 101)).tolist() == pytest.approx([50.0, 50.0], abs=1e-4)
    # expectation, not argmax: two equal bins at 20 and 40 give 30
    two = torch.full((1, 101), -1e4)
    two[0, 20] = two[0, 40] = 0.0
    assert expected_age(two).item() == pytest.approx(30.0, abs=1e-4)


def test_decode_crop_gives_probability_and_years():
    logits = torch.full((2, 101), -1e4)
    logits[0, 7] = logits[1, 64] = 0.0
    dec = decode_crop({"gender": torch.tensor([0.0, _logit(0.9)]), "age": logits})
    assert dec["gender"].tolist() == pytest.approx([0.5, 0.9], abs=1e-6)
    assert dec["age"].tolist() == pytest.approx([7.0, 64.0], abs=1e-3)
