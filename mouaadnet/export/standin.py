"""The random stand-in model: a seeded, untrained MouaadNet exported like a trained one (``model.export``), for
the apps, the serving tests and benchmarks when no trained weights are at hand. Needs torch and onnx."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from mouaadnet.data.samples import sample_images

STANDIN_SEED = 0
STANDIN_VERSION = f"stand-in: random weights (seed {STANDIN_SEED}), no trained model in weights/"
_STANDIN_LOCK = threading.Lock()


def export_standin_onnx(path: str | Path, seed: int = STANDIN_SEED) -> Path:
    """One scene-mode stand-in graph at ``path`` (the file a Triton `detector` version holds)."""
    path = Path(path)
    scene = export_standin(path.parent / f".standin-{seed}", seed)["scene"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(scene.read_bytes())
    return path


def _calibration_photos(seed: int):
    """The sample photos letterboxed to 320 (random images when neither package is installed)."""
    import torch

    from mouaadnet.data.letterbox import load_images

    photos = list(sample_images().values())
    if photos:
        return load_images(photos, 320)
    return torch.from_numpy(np.random.default_rng(seed).random((2, 3, 320, 320), dtype=np.float32))


def export_standin(out_dir: str | Path, seed: int = STANDIN_SEED, int8: bool = False) -> dict[str, Path]:
    """Export (once) a seeded random MouaadNet as scene.onnx + crop.onnx with sidecars (``int8``: also
    scene.int8.onnx, static INT8 calibrated on the sample photos, for latency comparisons); needs torch and onnx.

    A freshly initialised head is flat (every score ~ the heatmap prior), so the stand-in rescales the last
    convs of the heads on the sample photos: distinct peaks, boxes of varied size, genders across [0, 1].
    That keeps the apps and their tests meaningful to look at (distinct detections to compare between the
    browser and Python) without trained weights; it is still a random model.
    """
    out_dir = Path(out_dir)
    paths = {"scene": out_dir / "scene.onnx", "crop": out_dir / "crop.onnx"}
    if int8:
        paths["scene_int8"] = out_dir / "scene.int8.onnx"
    with _STANDIN_LOCK:
        if all(p.is_file() and Path(str(p) + ".json").is_file() for p in paths.values()):
            return paths
        import torch

        from model import ModelConfig, build_model
        from model.artifacts import write_sidecar
        from model.export import export_onnx

        torch.manual_seed(seed)
        net = build_model(ModelConfig()).eval()
        calib = _calibration_photos(seed)
        _spread_heads(net, calib)
        out_dir.mkdir(parents=True, exist_ok=True)
        for mode in ("scene", "crop"):
            path = paths[mode]
            tmp = path.with_name(path.stem + ".tmp.onnx")
            export_onnx(net, tmp, mode, 320 if mode == "scene" else 112)
            tmp.replace(path)
            write_sidecar(path, "fp32", extra={"mode": mode, "version": STANDIN_VERSION})
        if int8:
            from model.export import quantize_int8

            path = paths["scene_int8"]
            tmp = path.with_name(path.stem + ".tmp.onnx")
            quantize_int8(paths["scene"], tmp, torch.cat([calib, calib.flip(-1)]))
            tmp.replace(path)
            write_sidecar(path, "int8", source=paths["scene"], extra={"mode": "scene", "version": STANDIN_VERSION})
    return paths


def _spread_heads(net, calib) -> None:
    """Rescale the heads' last convs so their outputs over ``calib`` have a chosen mean and spread."""
    import torch

    seen = {}
    convs = {"heat": net.detection.heatmap, "size": net.detection.size, "attr": net.attributes.decision}
    hooks = [conv.register_forward_hook(lambda _m, _i, out, key=key: seen.__setitem__(key, out.detach()))
             for key, conv in convs.items()]
    with torch.no_grad():
        net(calib)
        for hook in hooks:
            hook.remove()
        attr_std = torch.ones(seen["attr"].shape[1])
        attr_std[0] = 2.0  # the gender logit
        targets = {"heat": (2.0, -6.0), "size": (0.4, float(np.log(8.0))), "attr": (attr_std, 0.0)}
        for key, (std, mean) in targets.items():
            out, conv = seen[key], convs[key]
            mu, sd = out.mean(dim=(0, 2, 3)), out.std(dim=(0, 2, 3)).clamp_min(1e-6)
            factor = std / sd
            conv.weight.mul_(factor.view(-1, 1, 1, 1))
            conv.bias.copy_((conv.bias - mu) * factor + mean)


