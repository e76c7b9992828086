"""`evaluate --box-cells` (mouaadnet/evaluation/box_cells.py): where box precision is lost, on a model whose head
maps are written by hand from the ground truth."""

from __future__ import annotations

import math

import pytest
import torch

from model import ModelConfig
from model.losses import dense_box_targets, encode_ltrb, scene_targets
from mouaadnet.data.dataset import SceneDataset, collate_scene
from mouaadnet.data.synthetic import synthetic_scenes
from mouaadnet.evaluation.box_cells import box_cell_report

SIZE = 128


class HandMadeV2(torch.nn.Module):
    """Scene head maps of a known batch: Gaussian peaks at the centres and, at every core cell, the exact box;
    ``shift``: the peaks move one cell right, where the box is ``stretch`` times too wide."""

    def __init__(self, batch: dict, shift: bool = False, stretch: float = 1.0, plateau: bool = False):
        super().__init__()
        self.cfg = ModelConfig(arch="v2")
        self.batch, self.shift, self.stretch, self.plateau = batch, shift, stretch, plateau

    def forward(self, images, mode="scene"):
        n, h, w = len(images), SIZE // 8, SIZE // 8
        heat = scene_targets(self.batch, h, w)["heatmap"].clamp(1e-4, 1 - 1e-4)
        ltrb = encode_ltrb(dense_box_targets(self.batch["boxes"], self.batch["box_mask"], h, w)["boxes"], h, w)
        if self.plateau:  # a flat top: every cell of it is a 3x3 maximum, so a peak of its own
            heat = heat.clamp(max=0.5)
        if self.shift:
            heat = torch.roll(heat, 1, dims=-1)
            ltrb = ltrb.clone()
            ltrb[:, [0, 2]] += math.log(self.stretch)  # wider boxes everywhere but at the centre cells
            cells = scene_targets(self.batch, h, w)
            for i, j in zip(*torch.nonzero(cells["valid"], as_tuple=True)):
                x, y = cells["cell"][i, j].long().tolist()
                ltrb[i, [0, 2], y, x] -= math.log(self.stretch)
        return {"heatmap": torch.logit(heat), "ltrb": ltrb, "gender": torch.zeros(n, 1, h, w),
                "age": torch.zeros(n, 101, h, w)}


def _batch_and_samples():
    samples = [s for s in synthetic_scenes(8, seed=4, size=SIZE) if s.has_boxes][:4]
    batch = collate_scene([SceneDataset(samples, SIZE, augment=False)[i] for i in range(len(samples))])
    return batch, samples


def test_exact_maps_report_perfect_boxes_at_the_centre():
    batch, samples = _batch_and_samples()
    report = box_cell_report(HandMadeV2(batch), samples, SIZE, batch_size=len(samples))
    assert report["people"] == int(batch["box_mask"].sum())
    assert report["reported_mean_iou"] > 0.95 and report["centre_cell_at75"] == 1.0
    assert report["best_core_cell_mean_iou"] > 0.99 and report["peak_at_centre"] > 0.9
    assert report["core_peaks"] == pytest.approx(1.0, abs=0.25)  # one peak per person
    assert sum(report[f"people_{band}"] for band in ("small", "medium", "large")) == report["people"]


def test_a_plateau_shows_as_several_peaks_in_a_core():
    batch, samples = _batch_and_samples()
    report = box_cell_report(HandMadeV2(batch, plateau=True), samples, SIZE, batch_size=len(samples))
    assert report["core_peaks"] > 1.5  # the exact maps: one (test above)


def test_a_peak_off_the_centre_reports_its_worse_box():
    batch, samples = _batch_and_samples()
    report = box_cell_report(HandMadeV2(batch, shift=True, stretch=1.8), samples, SIZE, batch_size=len(samples))
    assert report["centre_cell_mean_iou"] > 0.99  # the centre cells still hold the exact boxes
    assert report["reported_mean_iou"] < 0.8 and report["peak_at_centre"] < 0.2  # the peaks read the wide ones
    assert report["peak_offset_w"] > 0


def test_a_v1_model_is_refused():
    from model import build_model

    batch, samples = _batch_and_samples()
    with pytest.raises(ValueError, match="arch-v2"):
        box_cell_report(build_model(ModelConfig(scene_size=SIZE)).eval(), samples, SIZE)
