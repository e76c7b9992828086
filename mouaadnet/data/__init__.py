"""Data layer: readers, synthetic data, augmentation, splits and checks (torch datasets: mouaadnet.data.dataset)."""

# The torch datasets are not re-exported here so that reading/checking data does not import torch.
from .augment import (
    CropAugment,
    SceneAugment,
    color_jitter,
    hflip,
    letterbox,
    random_scale_crop,
    small_rotation,
)
from .check import DataReport, check_sources, format_report
from .readers import Problem, ReadResult, read_coco_json, read_peta, read_utkface, read_yolo
from .sources import load_source
from .splits import split_samples
from .synthetic import generate_scene, synthetic_crops, synthetic_scenes, write_synthetic_dataset

__all__ = [
    "CropAugment",
    "DataReport",
    "Problem",
    "ReadResult",
    "SceneAugment",
    "check_sources",
    "color_jitter",
    "format_report",
    "generate_scene",
    "hflip",
    "letterbox",
    "load_source",
    "random_scale_crop",
    "read_coco_json",
    "read_peta",
    "read_utkface",
    "read_yolo",
    "small_rotation",
    "split_samples",
    "synthetic_crops",
    "synthetic_scenes",
    "write_synthetic_dataset",
]
