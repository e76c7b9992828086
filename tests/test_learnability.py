"""Learnability: the shipped smoke config, trained for a few CPU minutes on synthetic data, must learn every task.

This is the test that proves the losses, target encoding, masks, decoding and metrics are wired right: a bug in
any of them keeps one of these metrics near chance. Thresholds sit far from chance (AP50 0, gender 50 %,
age MAE ~25 years for a constant guess over 0..100) and just below what the run reaches on this 2-core CPU
(AP50 0.80, gender 100 % / 99.5 %, age MAE 8.0 scene / 6.2 crop; docs/BENCHMARKS.md), leaving room for
oneDNN kernels that differ between CPUs: the test fails on a broken pipeline, not on noise.
"""

from pathlib import Path

import pytest

from mouaadnet.training.config import TrainConfig
from mouaadnet.training.trainer import train

SMOKE = Path(__file__).resolve().parent.parent / "configs" / "smoke.yaml"


@pytest.mark.slow
def test_smoke_training_learns_boxes_gender_and_age(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    summary = train(TrainConfig.from_yaml(SMOKE), tmp_path / "run", progress=False)
    best = summary.history  # metrics of every epoch; read the one best.pt was saved from
    epoch = summary.best_epoch - 1
    scene_ap50 = best["val/synthetic/AP50"][epoch]
    scene_gender = best["val/synthetic/gender_accuracy"][epoch]
    scene_mae = best["val/synthetic/age_mae"][epoch]
    crop_gender = best["val/synthetic-crops/gender_accuracy"][epoch]
    crop_mae = best["val/synthetic-crops/age_mae"][epoch]
    report = (f"AP50 {scene_ap50:.3f}, scene gender {scene_gender:.3f}, scene age MAE {scene_mae:.2f}, "
              f"crop gender {crop_gender:.3f}, crop age MAE {crop_mae:.2f}")
    print(report)
    assert scene_ap50 >= 0.7, report
    assert scene_gender >= 0.95 and crop_gender >= 0.95, report
    assert scene_mae <= 10.0 and crop_mae <= 8.0, report
