"""MouaadNet-Ultra network: plain PyTorch, no MLOps imports."""

from .config import MAX_AGE, NUM_AGE_BINS, ConfigError, ModelConfig
from .decode import decode_crop, decode_scene, expected_age, filter_detections
from .network import CROP_OUTPUTS, SCENE_OUTPUTS, MouaadNet, build_model
from .reparam import reparameterize_model

__all__ = [
    "CROP_OUTPUTS", "MAX_AGE", "NUM_AGE_BINS", "SCENE_OUTPUTS", "ConfigError", "ModelConfig", "MouaadNet",
    "build_model", "decode_crop", "decode_scene", "expected_age", "filter_detections", "reparameterize_model",
]
