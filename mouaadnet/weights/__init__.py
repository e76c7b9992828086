"""The shipped model, read side: what `weights/` holds, how it is verified, which file runs by default (a trained
checkpoint becomes it in ``mouaadnet.export.ship``)."""

from mouaadnet.weights.shipped import WeightsError, default_model, load_manifest, verify_weights, weights_dir

__all__ = ["WeightsError", "default_model", "load_manifest", "verify_weights", "weights_dir"]
