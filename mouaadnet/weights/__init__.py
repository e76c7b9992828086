"""The shipped model: what `weights/` holds, how it is verified, and how a trained checkpoint becomes it."""

from mouaadnet.weights.shipped import WeightsError, default_model, load_manifest, verify_weights, weights_dir

__all__ = ["WeightsError", "default_model", "load_manifest", "verify_weights", "weights_dir"]
