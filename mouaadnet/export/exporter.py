"""The export recipe, written once: what `mouaadnet reparam | export | gates`, the pipeline's reparameterize and
export steps and `mouaadnet ship` all call.

- the reparameterization check (fused deploy form vs training form, ``REPARAM_TOLERANCE``) and the deploy
  checkpoint with its sidecar;
- FP32 ONNX (``model.export.export_onnx``: decoding in the graph, checked against PyTorch) with its sidecar;
- INT8 QDQ ONNX, calibrated (PTQ) or with the activation ranges a QAT checkpoint learned, with its sidecar;
- the OpenVINO IR (``mouaadnet.runtime.openvino_export.export_ir``) from those graphs;
- the quality gates (``mouaadnet.evaluation.gates.run_gates``), stored in the sidecar of the file they judge.

The runtime choice that follows the gates is ``mouaadnet.export.runtime_choice``. The graphs come from
``model.export``'s legacy TorchScript exporter, not the torch.export-based one: that one rejects the symmetric
INT8 fake-quant range QAT checkpoints export with and needs onnxscript (``model/export.py`` says more).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from model.artifacts import sidecar_path, write_sidecar
from mouaadnet.export.images import ImageSource

MODES = ("scene", "crop")
REPARAM_TOLERANCE = 1e-3  # max abs diff of any head output, fused vs training form
CHECK_IMAGES = 8  # images of the ONNX Runtime parity check (the INT8 and OpenVINO agreement reuse them)


class ReparamError(ValueError):
    """The fused model's outputs moved more than ``REPARAM_TOLERANCE`` from the training form's."""

    def __init__(self, diffs: dict[str, float]):
        self.diffs = diffs
        super().__init__(f"max abs diff {max(diffs.values()):.3g} > {REPARAM_TOLERANCE:g}")


@dataclass
class Reparameterized:
    path: Path
    diffs: dict[str, float]  # mode -> max abs diff, fused vs training form
    params: int


@dataclass
class Fp32Onnx:
    path: Path
    mode: str
    size: int
    parity: dict
    check: torch.Tensor  # the images of the parity check
    real_images: int


@dataclass
class Int8Onnx:
    path: Path
    variant: str  # the gate report's name: "int8_ptq" or "int8_qat"
    agreement: dict
    calibration_images: int
    qdq: dict[str, int]


@dataclass
class OpenVinoIr:
    path: Path
    fp32: Fp32Onnx
    qdq: Int8Onnx | None  # the QDQ graph the IR was read from (--int8 qat)
    report: dict


def qat_ranges(checkpoint: str | Path) -> dict | None:
    """The activation ranges a QAT checkpoint learned (its "qat" entry); None for any other checkpoint."""
    return torch.load(str(checkpoint), map_location="cpu", weights_only=True).get("qat")


class Exporter:
    """One model on its way to deployable files; ``source`` is the checkpoint its sidecars name."""

    def __init__(self, model: torch.nn.Module, source: str | Path):
        self.model = model.eval()
        self.source = Path(source)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Exporter:
        """A training, deploy-form or QAT checkpoint (``model.artifacts.load_model_checkpoint``)."""
        from model.artifacts import load_model_checkpoint

        model, _ = load_model_checkpoint(path)
        return cls(model, path)

    def input_size(self, mode: str, size: int | None = None) -> int:
        """``size``, else the model config's input size of ``mode``."""
        return size or (self.model.cfg.scene_size if mode == "scene" else self.model.cfg.crop_size)

    def reparameterize(self, out: str | Path, images: ImageSource, count: int = 16) -> Reparameterized:
        """Fuse RepVGG branches and Conv+BN, check the fused form of each mode against the training form on
        ``count`` images per mode (``ReparamError`` above ``REPARAM_TOLERANCE``), then write the deploy checkpoint
        (scene BatchNorm statistics folded: the pipeline serves the scene graph; `ship` and `export` fold each
        mode's own from the training form) and its sidecar."""
        from model import reparameterize_model

        deploy = reparameterize_model(self.model, "scene")
        diffs = {}
        for mode in MODES:
            x, _ = images.take(mode, self.input_size(mode), count)
            fused = deploy if mode == "scene" else reparameterize_model(self.model, mode)
            with torch.no_grad():
                a, b = self.model(x, mode=mode), fused(x, mode=mode)
            diffs[mode] = max(float((a[k] - b[k]).abs().max()) for k in a)
        if not max(diffs.values()) <= REPARAM_TOLERANCE:
            raise ReparamError(diffs)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": deploy.state_dict(), "model_config": self.model.cfg.model_dump(), "form": "deploy"}, out)
        params = sum(p.numel() for p in deploy.parameters())
        write_sidecar(out, "fp32", source=self.source, metrics={"reparam_max_abs_diff": diffs},
                      extra={"form": "deploy", "params": params})
        return Reparameterized(out, diffs, params)

    def export_fp32(self, out: str | Path, mode: str, images: ImageSource, size: int | None = None,
                    top_k: int | None = None, opset: int = 17) -> Fp32Onnx:
        """FP32 ONNX of ``mode`` (raises ``OnnxValidationError`` when ONNX Runtime disagrees with PyTorch on
        ``CHECK_IMAGES`` images) and its sidecar with the parity report."""
        from model.export import export_onnx

        out, size = Path(out), self.input_size(mode, size)
        check, real = images.take(mode, size, CHECK_IMAGES)
        parity = export_onnx(self.model, out, mode, size, top_k, opset, images=check)
        write_sidecar(out, "fp32", source=self.source,
                      metrics={"parity_fp32_vs_torch": parity, "parity_images_real": real},
                      extra={"mode": mode, "size": size})
        return Fp32Onnx(out, mode, size, parity, check, real)

    def export_int8(self, fp32: Fp32Onnx, out: str | Path, images: ImageSource, count: int = 64,
                    activation: str = "u8", qat: dict | None = None, calibrate_method: str = "MinMax") -> Int8Onnx:
        """INT8 QDQ ONNX of the ``fp32`` graph, calibrated on ``count`` images; ``qat``: a QAT checkpoint's
        ranges (``qat_ranges``) override the calibrated ones. Its sidecar says how far it is from FP32."""
        from model.export import count_qdq, int8_agreement, quantize_int8
        from model.quantization import qat_overrides

        out = Path(out)
        overrides = qat_overrides(qat["ranges"], fp32.path) if qat else None
        calib, n_calib = images.take(fp32.mode, fp32.size, count)
        quantize_int8(fp32.path, out, calib, activation, overrides, calibrate_method=calibrate_method)
        agreement, qdq = int8_agreement(fp32.path, out, fp32.check), count_qdq(out)
        variant = "int8_qat" if qat else "int8_ptq"
        write_sidecar(out, f"int8-{'qat' if qat else 'calib'}-{activation}", source=self.source,
                      metrics={"int8_vs_fp32": agreement, "calibration_images": n_calib, **qdq},
                      extra={"mode": fp32.mode, "size": fp32.size, "fp32": fp32.path.name, "variant": variant,
                             "calibration_method": calibrate_method})
        return Int8Onnx(out, variant, agreement, n_calib, qdq)

    def export_openvino(self, xml: str | Path, mode: str, images: ImageSource, int8: str = "none", count: int = 64,
                        activation: str = "u8", qat: dict | None = None, size: int | None = None,
                        top_k: int | None = None, opset: int = 17) -> OpenVinoIr:
        """OpenVINO IR (``xml`` + .bin) beside the ONNX graph(s) it is read from: X.fp32.onnx; ``int8`` "calib":
        NNCF INT8 calibrated on ``count`` images; "qat": from X.qdq.onnx (``qat`` ranges) and X.qdq.fp32.onnx."""
        from mouaadnet.runtime.openvino_export import export_ir

        xml = Path(xml)
        qdq_path = xml.with_suffix(".qdq.onnx") if int8 == "qat" else None
        fp32_path = qdq_path.with_name(qdq_path.stem + ".fp32.onnx") if qdq_path else xml.with_suffix(".fp32.onnx")
        fp32 = self.export_fp32(fp32_path, mode, images, size, top_k, opset)
        qdq = self.export_int8(fp32, qdq_path, images, count, activation, qat) if qdq_path else None
        calib = images.take(mode, fp32.size, count)[0].numpy() if int8 == "calib" else None
        report = export_ir(fp32.path, xml, fp32.check.numpy(), qdq=qdq_path, calibration=calib, source=self.source,
                           mode=mode, size=fp32.size)
        return OpenVinoIr(xml, fp32, qdq, report)

    def gate(self, specs: list[str], limit: int | None = None, config: str | Path | None = None,
             fp32: Sequence[Path] = (), int8: dict[str, list[Path]] | None = None, gated: str = "int8_qat",
             openvino: dict | None = None, sidecar_of: Path | None = None):
        """``gate`` with this model as the PyTorch reference, at its config's input sizes."""
        return gate(specs, limit, config, self.model, fp32, int8, gated, openvino, sidecar_of,
                    self.model.cfg.scene_size, self.model.cfg.crop_size)


def gate(specs: list[str], limit: int | None = None, config: str | Path | None = None, model=None,
         fp32: Sequence[Path] = (), int8: dict[str, list[Path]] | None = None, gated: str = "int8_qat",
         openvino: dict | None = None, sidecar_of: Path | None = None, scene_size: int = 320,
         crop_size: int = 112):
    """The quality gates on the validation sets of ``specs`` and/or a training ``config`` (``limit`` samples each),
    with ``model`` (PyTorch, may be None) as the reference; the report is added to ``sidecar_of``'s sidecar.
    Raises ValueError / FileNotFoundError for sets that cannot be read."""
    from mouaadnet.evaluation.gates import load_eval_sets, run_gates

    sets = load_eval_sets(list(specs), limit, config)
    report = run_gates(sets, model, list(fp32), int8 or {}, scene_size, crop_size, gated=gated, openvino=openvino)
    if sidecar_of is not None:
        add_to_sidecar(sidecar_of, "gates", report.to_dict())
    return report


def add_to_sidecar(artifact: str | Path, key: str, value: object) -> None:
    """Set ``metrics[key]`` in the JSON sidecar of ``artifact``, when it has one."""
    path = sidecar_path(artifact)
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    data.setdefault("metrics", {})[key] = value
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
