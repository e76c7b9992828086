"""`mouaadnet reparam | qat | export | gates | compile-trt`: from a checkpoint to deployable files (wiring only).

The work is done by ``mouaadnet.export`` (``Exporter``: reparameterization check, FP32 / INT8 ONNX, OpenVINO IR,
sidecars, gates; ``runtime_choice``), ``mouaadnet.training.qat`` and ``model.tensorrt``. Registered on the main
app by ``register(app)``; the benchmark commands are in ``mouaadnet.cli.bench``.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from mouaadnet.cli._common import fail, image_source, load_checkpoint

EXIT_TENSORRT_MISSING = 3


class ModeOpt(str, Enum):
    scene = "scene"
    crop = "crop"


class Int8Opt(str, Enum):
    none = "none"
    calib = "calib"
    qat = "qat"


class FormatOpt(str, Enum):
    onnx = "onnx"
    openvino = "openvino"


class OvPrecisionOpt(str, Enum):
    default = "default"  # OpenVINO's own default on this CPU (bf16 with AMX), resolved and printed
    f32 = "f32"
    bf16 = "bf16"


class ActOpt(str, Enum):
    u8 = "u8"
    s8 = "s8"


class PlacementOpt(str, Enum):
    after_reparam = "after_reparam"
    before_reparam = "before_reparam"


class PrecisionOpt(str, Enum):
    fp16 = "fp16"
    int8 = "int8"


def reparam(
    checkpoint: Annotated[Path, typer.Argument(help="Training checkpoint (.pt).")],
    out: Annotated[Path, typer.Option(help="Deploy-form checkpoint to write.")],
    images: Annotated[Path | None, typer.Option(help="Folder / .txt list of validation images to verify on.")] = None,
    num_images: Annotated[int, typer.Option(help="Images used for the check.")] = 16,
) -> None:
    """Fuse RepVGG branches and Conv+BN; verify against the training form (fails above 1e-3 max abs diff)."""
    from mouaadnet.export.exporter import REPARAM_TOLERANCE, Exporter, ReparamError

    model, _ = load_checkpoint(checkpoint)
    failure = None
    try:
        diffs = Exporter(model, checkpoint).reparameterize(out, image_source(images, what="the check"), num_images).diffs
    except ReparamError as error:
        diffs, failure = error.diffs, str(error)
    typer.echo(f"reparam: max abs diff fused vs training form  scene {diffs['scene']:.2e}  crop {diffs['crop']:.2e}"
               f"  (limit {REPARAM_TOLERANCE:g})")
    if failure:
        fail(f"reparam FAILED: {failure}")
    typer.echo(f"wrote {out}")


def export(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Checkpoint: training, reparam or QAT.")],
    out: Annotated[Path, typer.Option(help="ONNX file to write (the INT8 graph when --int8 is given).")],
    mode: Annotated[ModeOpt, typer.Option(help="scene: final detections; crop: gender, age per crop.")] = ModeOpt.scene,
    int8: Annotated[Int8Opt, typer.Option(help="none: FP32; calib: PTQ on --images; qat: QDQ with the QAT "
                                               "checkpoint's learned ranges.")] = Int8Opt.none,
    images: Annotated[Path | None, typer.Option(help="Folder / .txt list of real images (parity, calibration).")] = None,
    num_calib: Annotated[int, typer.Option(help="Calibration images for INT8.")] = 64,
    activation: Annotated[ActOpt, typer.Option(help="INT8 activations: u8 (fast on x86 ORT) or s8 (symmetric, "
                                                    "for TensorRT).")] = ActOpt.u8,
    size: Annotated[int | None, typer.Option(help="Input size (default: the config's scene/crop size).")] = None,
    top_k: Annotated[int | None, typer.Option(help="Detections per image K (default: config top_k).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 17).")] = 17,
    batch: Annotated[str, typer.Option(help="Batch axis: 'dynamic' (the only supported value).")] = "dynamic",
    calib_data: Annotated[list[str] | None, typer.Option(help="Data source specs (repeatable) to take parity and "
                                                              "calibration images from when --images is not "
                                                              "given, e.g. synthetic:64:0.")] = None,
    val_data: Annotated[list[str] | None, typer.Option(help="Validation sources (repeatable, as for `evaluate "
                                                            "--data`): evaluate and print the quality gates.")] = None,
    val_limit: Annotated[int | None, typer.Option(help="At most this many validation samples per source.")] = None,
    format: Annotated[FormatOpt, typer.Option("--format", help="onnx, or openvino: an OpenVINO IR (--out X.xml + "
                                                               "X.bin) from the FP32 graph; with --int8 calib NNCF "
                                                               "INT8 on the same images, with --int8 qat the QDQ "
                                                               "graph's ranges.")] = FormatOpt.onnx,
) -> None:
    """Export to ONNX (decoding in the graph, BN folded, onnxslim), validate, optionally INT8 QDQ; write sidecars.

    With --val-data, PyTorch, FP32 ONNX and INT8 ONNX are evaluated on the sets of this mode and the quality gates
    (``mouaadnet.evaluation.gates``) are printed and stored in the sidecar; exit code 1 when an enforced gate fails.
    --format openvino writes the IR (``mouaadnet.runtime.openvino_export``) beside the ONNX graphs it comes from.
    """
    from model.export import OnnxValidationError
    from mouaadnet.export.exporter import Exporter
    from mouaadnet.export.images import ImageSourceError

    if format == FormatOpt.openvino:
        _check_openvino(out)
    if batch != "dynamic":
        fail("--batch: only 'dynamic' is supported", 2)
    model, cfg = load_checkpoint(model_path)
    size = size or (cfg.scene_size if mode == ModeOpt.scene else cfg.crop_size)
    if mode == ModeOpt.scene and size % 32:
        fail(f"--size must be a multiple of 32 in scene mode, got {size}", 2)
    qat = _qat_ranges(model_path, activation.value) if int8 == Int8Opt.qat else None
    what = "the ONNX Runtime parity check" + ("" if int8 == Int8Opt.none else " and INT8 calibration")
    job = {"exporter": Exporter(model, model_path), "out": out, "mode": mode.value,
           "images": image_source(images, calib_data, what), "int8": int8.value, "count": num_calib,
           "activation": activation.value, "qat": qat, "size": size, "top_k": top_k, "opset": opset}
    try:
        gated = _export_openvino(**job) if format == FormatOpt.openvino else _export_onnx(**job)
    except typer.Exit:  # a failure the helpers reported already (typer.Exit is a RuntimeError)
        raise
    except ImageSourceError as error:
        fail(f"--calib-data: {error}", 2)
    except OnnxValidationError as error:
        fail(f"export FAILED: {error}")
    except (OSError, RuntimeError) as error:  # e.g. a full disk: the previous file at --out is left as it was
        fail(f"export FAILED: cannot write {out}: {str(error).strip().splitlines()[-1][:300]}")
    if val_data:
        _gate(job["exporter"], val_data, val_limit, gated)


def _qat_ranges(checkpoint: Path, activation: str) -> dict:
    """The QAT checkpoint's activation ranges; exit 2 for a checkpoint without them."""
    from mouaadnet.export.exporter import qat_ranges

    qat = qat_ranges(checkpoint)
    if not qat:
        fail(f"{checkpoint} is not a QAT checkpoint (no 'qat' ranges); use --int8 calib", 2)
    if qat.get("act") and qat["act"] != activation:
        typer.echo(f"warning: QAT was trained for {qat['act']} activations, exporting {activation}", err=True)
    return qat


def _check_openvino(out: Path) -> None:
    from mouaadnet.runtime import openvino_available

    if out.suffix != ".xml":
        fail(f"--format openvino writes an IR: --out must end with .xml, got {out}", 2)
    if not openvino_available():
        fail("--format openvino needs the openvino package: pip install 'mouaadnet-ultra[openvino]'", 2)


def _echo_fp32(fp32) -> None:
    typer.echo(f"wrote {fp32.path}  parity vs PyTorch: " + ", ".join(f"{k} {v:.2e}" for k, v in fp32.parity.items()
                                                                   if isinstance(v, float)))


def _echo_int8(int8) -> None:
    typer.echo(f"wrote {int8.path}  ({int8.path.stat().st_size / 1e6:.3f} MB, {int8.qdq})  INT8 vs FP32: "
               + json.dumps(int8.agreement))


def _export_onnx(exporter, out: Path, mode: str, images, int8: str, count: int, activation: str, qat: dict | None,
                 size: int, top_k: int | None, opset: int) -> dict:
    """`export --format onnx`: the FP32 graph (at --out, or beside it as X.fp32.onnx with --int8), then the INT8
    one; returns what the gates judge."""
    from model.export import OnnxValidationError

    fp32 = exporter.export_fp32(out if int8 == "none" else out.with_name(out.stem + ".fp32.onnx"), mode, images,
                                size, top_k, opset)
    _echo_fp32(fp32)
    if int8 == "none":
        return {"fp32": [fp32.path], "sidecar_of": fp32.path}
    try:
        quantized = exporter.export_int8(fp32, out, images, count, activation, qat)
    except OnnxValidationError as error:
        fail(f"INT8 export FAILED: {error}")
    _echo_int8(quantized)
    return {"fp32": [fp32.path], "int8": {quantized.variant: [out]}, "sidecar_of": out, "gated": quantized.variant}


def _export_openvino(exporter, out: Path, mode: str, images, int8: str, count: int, activation: str,
                     qat: dict | None, size: int, top_k: int | None, opset: int) -> dict:
    """`export --format openvino`: X.fp32.onnx (+ X.qdq.onnx for qat) beside X.xml/X.bin; returns what the gates
    judge."""
    from mouaadnet.runtime.openvino_export import OpenVinoExportError

    try:
        ir = exporter.export_openvino(out, mode, images, int8, count, activation, qat, size, top_k, opset)
    except OpenVinoExportError as error:
        fail(f"OpenVINO export FAILED: {error}")
    _echo_fp32(ir.fp32)
    if ir.qdq is not None:
        _echo_int8(ir.qdq)
    typer.echo(f"wrote {out} + {out.with_suffix('.bin').name}  ({ir.report['ir_mb']:.3f} MB, "
               f"{ir.report['precision']})  OpenVINO f32 vs ONNX Runtime FP32: " + json.dumps(ir.report["agreement"]))
    return {"fp32": [ir.fp32.path], "sidecar_of": out, "openvino": [out]}


def _gate(exporter, val_data: list[str], limit: int | None, files: dict) -> None:
    """`export --val-data`: evaluate, print the gates and store them in the sidecar; exit 1 when one fails.
    ``files["openvino"]``: IR files, run at OpenVINO's default precision."""
    if "openvino" in files:
        from mouaadnet.evaluation.gates import openvino_variants

        files["openvino"] = openvino_variants(files["openvino"], (None,))
    try:
        report = exporter.gate(val_data, limit, **files)
    except (ValueError, FileNotFoundError) as error:
        fail(f"gates: {error}", 2)
    typer.echo(report.format())
    if not report.passed:
        raise typer.Exit(1)


def gates(
    data: Annotated[list[str] | None, typer.Option(help="Validation sources (repeatable): YOLO dir, COCO .json, "
                                                        "UTKFace dir, PETA dir, FairFace dir, synthetic:N[:SEED], "
                                                        "synthetic-crops:N[:SEED].")] = None,
    config: Annotated[Path | None, typer.Option(help="A training config: gate on its validation splits (the same "
                                                     "identity split as training).")] = None,
    fp32: Annotated[list[Path] | None, typer.Option(help="FP32 ONNX file(s), scene and/or crop (mode read from "
                                                         "the graph).")] = None,
    int8: Annotated[list[Path] | None, typer.Option(help="INT8 ONNX file(s) from QAT: the gated variant.")] = None,
    ptq: Annotated[list[Path] | None, typer.Option(help="INT8 ONNX file(s) from PTQ: reported beside.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="The PyTorch model the FP32 graph must match.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many validation samples per source.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    openvino: Annotated[list[Path] | None, typer.Option(help="Files to run in OpenVINO (repeatable): FP32 ONNX, "
                                                             "OpenVINO IR .xml (FP32 or NNCF INT8) or QDQ ONNX; "
                                                             "gated like INT8 against the FP32 ONNX in ONNX "
                                                             "Runtime.")] = None,
    ov_precision: Annotated[list[OvPrecisionOpt] | None, typer.Option(
        help="OpenVINO inference precision(s) for --openvino (repeatable): default (OpenVINO's on this CPU: bf16 "
             "with AMX), f32, bf16.")] = None,
    choose: Annotated[bool, typer.Option(help="Also time every variant and write runtime_choice.json (the fastest "
                                              "that passed; `detect --runtime auto` reads it) beside the first "
                                              "--fp32 file.")] = False,
) -> None:
    """Quality gates: FP32 ONNX == PyTorch, INT8 (QAT) drops <= 1 pt AP50 / gender acc, <= +0.3 y age MAE, <= 1 MB;
    OpenVINO variants (bf16, INT8) gated like INT8.

    Exit code 1 when an enforced gate fails (PTQ rows are reported only).
    """
    from mouaadnet.export.exporter import gate
    from mouaadnet.export.runtime_choice import record_choice

    if not data and config is None:
        fail("give --data SOURCE (repeatable) and/or --config TRAINING_CONFIG", 2)
    model = load_checkpoint(checkpoint)[0] if checkpoint is not None else None
    variants = {"int8_qat": list(int8 or []), "int8_ptq": list(ptq or [])}
    ov_variants = _openvino_variants(openvino, ov_precision) if openvino else None
    if choose and not fp32:
        fail("--choose needs the --fp32 graph(s): the choice is recorded beside them", 2)
    try:
        report = gate(list(data or []), limit, config, model, list(fp32 or []), variants, openvino=ov_variants)
    except (ValueError, FileNotFoundError) as error:
        fail(f"gates: {error}", 2)
    typer.echo(json.dumps(report.to_dict(), indent=2, default=float) if as_json else report.format())
    if choose:
        path, candidates = record_choice(report, list(fp32), variants, ov_variants or {}, Path(fp32[0]).parent)
        for c in candidates:
            typer.echo(f"runtime choice: {c.mode:<5} {c.variant:<14} {c.runtime:<11} {c.precision or '-':<5} "
                       f"p50 {c.p50_ms:6.2f} ms  {'passed' if c.passed else 'FAILED ' + ', '.join(c.failed_gates)}",
                       err=as_json)
        typer.echo(f"wrote {path}", err=as_json)
    if not report.passed:
        raise typer.Exit(1)


def _openvino_variants(files: list[Path], precisions: list[OvPrecisionOpt] | None) -> dict:
    """`gates --openvino`: the files at each --ov-precision; exit 2 without openvino or for a file it can't read."""
    from mouaadnet.evaluation.gates import openvino_variants
    from mouaadnet.runtime import RuntimeLoadError, openvino_available

    if not openvino_available():
        fail("--openvino needs the openvino package: pip install 'mouaadnet-ultra[openvino]'", 2)
    values = [None if p == OvPrecisionOpt.default else p.value for p in (precisions or [OvPrecisionOpt.default])]
    try:
        return openvino_variants(files, list(dict.fromkeys(values)))
    except RuntimeLoadError as error:
        fail(f"gates: {error}", 2)


def qat(
    checkpoint: Annotated[Path, typer.Argument(help="Trained checkpoint (best.pt / last.pt; EMA weights used).")],
    out: Annotated[Path, typer.Option(help="QAT checkpoint to write (folded deploy form + activation ranges).")],
    data: Annotated[list[str] | None, typer.Option(help="Training sources (repeatable; scene or crop mode "
                                                        "detected from the format); default: the config's.")] = None,
    config: Annotated[Path | None, typer.Option(help="Training config YAML (data, batch sizes, loss weights).")] = None,
    steps: Annotated[int, typer.Option(help="Fine-tuning steps (after the calibration batches).")] = 200,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine-decayed).")] = 1e-4,
    calib_steps: Annotated[int, typer.Option(help="Batches measuring activation ranges and BN statistics.")] = 8,
    freeze_bn_fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="Last fraction of the steps with the "
                                                      "re-inserted BN statistics and the activation ranges frozen; 1.0 "
                                                      "= all steps (the default, why: model/quantization.py).")] = 1.0,
    activation: Annotated[ActOpt, typer.Option(help="Activation grid: u8 (ORT x86) or s8 (TensorRT).")] = ActOpt.u8,
    placement: Annotated[PlacementOpt, typer.Option(help="after_reparam (the method) or before_reparam (the "
                                                         "measured alternative, docs/BENCHMARKS.md).")
                         ] = PlacementOpt.after_reparam,
    quiet: Annotated[bool, typer.Option(help="No per-step log.")] = False,
) -> None:
    """Quantization-aware fine-tune (after re-parameterization) with the training loss; prints metrics before/after."""
    from mouaadnet.cli.train import _load_train_config
    from mouaadnet.data.assembly import sources_by_mode
    from mouaadnet.data.config import SourceConfig
    from mouaadnet.training.checkpoint import CheckpointError
    from mouaadnet.training.config import TrainConfig
    from mouaadnet.training.qat import run_qat

    if config is not None:
        cfg = _load_train_config(config, data, None)
    elif data:
        cfg = TrainConfig()
        scene, crop = sources_by_mode(data)
        cfg.data.scene = [SourceConfig(path=p) for p in scene]
        cfg.data.crop = [SourceConfig(path=p) for p in crop]
    else:
        fail("qat: give --data and/or --config", 2)
    try:
        summary = run_qat(checkpoint, cfg, out, steps=steps, lr=lr, calib_steps=calib_steps, act=activation.value,
                          freeze_bn_fraction=freeze_bn_fraction,
                          progress=not quiet, placement=placement.value)
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        fail(f"qat failed: {error}", 2)
    typer.echo(f"QAT: {summary.steps} steps in {summary.seconds:.0f} s")
    typer.echo(f"{'metric':<44} {'before (float)':>15} {'QAT weights, float':>19} {'after (fake-quant)':>19}")
    for key in sorted(set(summary.before) | set(summary.after)):
        if any(k in key for k in ("AP50", "gender_accuracy", "age_mae", "score")):
            values = (summary.before, summary.after_float, summary.after)
            typer.echo(f"{key:<44} {values[0].get(key, float('nan')):>15.4f} {values[1].get(key, float('nan')):>19.4f}"
                       f" {values[2].get(key, float('nan')):>19.4f}")
    typer.echo(f"wrote {summary.out}")


def compile_trt_cmd(
    onnx_path: Annotated[Path, typer.Argument(metavar="MODEL.onnx", help="FP32 (fp16) or QDQ (int8) ONNX.")],
    out: Annotated[Path, typer.Option(help="Engine file to write (.plan).")],
    precision: Annotated[PrecisionOpt, typer.Option(help="fp16, or int8 from the graph's Q/DQ nodes.")] = PrecisionOpt.fp16,
    max_batch: Annotated[int, typer.Option(help="Largest batch of the optimization profile.")] = 16,
    timing_cache: Annotated[Path | None, typer.Option(help="Timing cache file (read and updated).")] = None,
) -> None:
    """Build a TensorRT engine (needs TensorRT and an NVIDIA GPU; exit code 3 when TensorRT is missing)."""
    from model.artifacts import write_sidecar
    from model.tensorrt import TensorRTUnavailable, compile_trt, engine_io

    try:
        plan = compile_trt(onnx_path, out, precision.value, max_batch, timing_cache=timing_cache)
        io = engine_io(plan)
    except TensorRTUnavailable as error:
        fail(f"compile-trt: {error}", EXIT_TENSORRT_MISSING)
    except (ValueError, RuntimeError) as error:
        fail(f"compile-trt FAILED: {error}")
    write_sidecar(plan, precision.value, source=onnx_path, io=io, extra={"max_batch": max_batch})
    typer.echo(f"wrote {plan}")


def register(app: typer.Typer) -> None:
    """Add reparam, qat, export, gates and compile-trt to the `mouaadnet` app."""
    app.command()(reparam)
    app.command()(qat)
    app.command()(export)
    app.command()(gates)
    app.command("compile-trt")(compile_trt_cmd)
