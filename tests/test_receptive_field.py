"""`evaluate --receptive-field` (mouaadnet/evaluation/receptive_field.py): the extent of input each person's
centre cell looks at, on models whose box outputs read a known window of the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mouaadnet.data.synthetic import synthetic_scenes
from mouaadnet.evaluation.receptive_field import half_extent, receptive_field_report

SIZE = 128


class WindowBoxes(torch.nn.Module):
    """Box outputs at each stride-8 cell = the mean of a ``window`` x ``window`` patch centred on the cell."""

    def __init__(self, window: int):
        super().__init__()
        self.window = window

    def forward(self, images, mode="scene"):
        pad = (self.window - 8) // 2
        ltrb = F.avg_pool2d(images.sum(1, keepdim=True), self.window, 8, pad, count_include_pad=False)
        return {"heatmap": torch.zeros_like(ltrb), "ltrb": ltrb.repeat(1, 4, 1, 1)}


def test_half_extent_of_a_uniform_window():
    profile = np.zeros(100)
    profile[40:60] = 1.0  # 20 px centred on 50
    assert half_extent(profile, 50.0, mass=1.0) == 10.0
    assert half_extent(profile, 50.0, mass=0.5) == 5.0
    assert np.isnan(half_extent(np.zeros(10), 5.0))


@pytest.mark.parametrize("window", [24, 56])
def test_the_extent_follows_the_window_the_box_outputs_read(window):
    samples = [s for s in synthetic_scenes(6, seed=2, size=SIZE) if s.has_boxes]
    report = receptive_field_report(WindowBoxes(window), samples, SIZE, max_people=12)
    assert report["people"] > 0
    # 90 % of a uniform window lies within 0.45 x its side of its centre; the person's centre is up to half a
    # cell (4 px) off the cell's
    assert report["vertical_px"] == pytest.approx(0.45 * window, abs=4.5)
    assert 0.0 <= report["inside_box"] <= 1.0
