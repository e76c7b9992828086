"""`mouaadnet reparam | qat | export | gates | compile-trt | bench`: from a checkpoint to deployable engines.

Registered on the main app by ``register(app)``; the work is done by ``model.export``, ``model.quantization``,
``model.tensorrt``, ``model.artifacts``, ``mouaadnet.training.qat``, ``mouaadnet.evaluation.gates`` and ``mouaadnet.bench.inference``.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

EXIT_TENSORRT_MISSING = 3
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
REPARAM_TOLERANCE = 1e-3


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


def _fail(message: str, code: int = 1):
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _image_paths(source: Path | None, limit: int) -> list[Path]:
    """Image files of a folder (sorted, first ``limit``), or the lines of a .txt list."""
    if source is None:
        return []
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    elif source.suffix == ".txt":
        paths = [Path(line.strip()) for line in source.read_text().splitlines() if line.strip()]
    else:
        paths = [source]
    if not paths:
        _fail(f"no images found in {source}", 2)
    return paths[:limit]


def _images(source: Path | None, limit: int, size: int, what: str):
    import torch

    from model.export import load_images

    paths = _image_paths(source, limit)
    if not paths:
        typer.echo(f"warning: no --images given; {what} runs on random inputs", err=True)
        return torch.rand(min(limit, 4), 3, size, size, generator=torch.Generator().manual_seed(0)), 0
    return load_images(paths, size), len(paths)


def _export_images(images: Path | None, specs: list[str] | None, limit: int, size: int, mode: str, what: str):
    """Real images from --images (files), else from --calib-data source specs, else random (with a warning)."""
    if images is None and specs:
        from mouaadnet.evaluation.onnx_eval import dataset_images

        try:
            x = dataset_images(specs, mode, size, limit)
        except ValueError as error:
            _fail(f"--calib-data: {error}", 2)
        return x, len(x)
    return _images(images, limit, size, what)


def _load(checkpoint: Path):
    from model.artifacts import load_model_checkpoint

    if not checkpoint.is_file():
        _fail(f"checkpoint not found: {checkpoint}", 2)
    try:
        return load_model_checkpoint(checkpoint)
    except Exception as error:  # noqa: BLE001 - a CLI turns any load problem into one line
        message = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
        _fail(f"cannot load checkpoint {checkpoint}: {message}", 2)


def reparam(
    checkpoint: Annotated[Path, typer.Argument(help="Training checkpoint (.pt).")],
    out: Annotated[Path, typer.Option(help="Deploy-form checkpoint to write.")],
    images: Annotated[Path | None, typer.Option(help="Folder / .txt list of validation images to verify on.")] = None,
    num_images: Annotated[int, typer.Option(help="Images used for the check.")] = 16,
) -> None:
    """Fuse RepVGG branches and Conv+BN; verify against the training form (fails above 1e-3 max abs diff)."""
    import torch

    from model import reparameterize_model
    from model.artifacts import write_sidecar

    model, cfg = _load(checkpoint)
    deploy = reparameterize_model(model)
    report = {}
    for mode in ("scene", "crop"):
        size = cfg.scene_size if mode == "scene" else cfg.crop_size
        x, _ = _images(images, num_images, size, "the check")
        with torch.no_grad():
            a, b = model(x, mode=mode), deploy(x, mode=mode)
        report[mode] = max(float((a[k] - b[k]).abs().max()) for k in a)
    worst = max(report.values())
    typer.echo(f"reparam: max abs diff fused vs training form  scene {report['scene']:.2e}  crop {report['crop']:.2e}"
               f"  (limit {REPARAM_TOLERANCE:g})")
    if not worst <= REPARAM_TOLERANCE:
        _fail(f"reparam FAILED: max abs diff {worst:.3g} > {REPARAM_TOLERANCE:g}")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": deploy.state_dict(), "model_config": cfg.model_dump(), "form": "deploy"}, out)
    write_sidecar(out, "fp32", source=checkpoint, metrics={"reparam_max_abs_diff": report},
                  extra={"form": "deploy", "params": sum(p.numel() for p in deploy.parameters())})
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
    if format == FormatOpt.openvino:
        _export_openvino(model_path, out, mode, int8, images, num_calib, activation, size, top_k, opset,
                         calib_data, val_data, val_limit)
        return
    import torch

    from model.artifacts import write_sidecar
    from model.export import (
        OnnxValidationError,
        count_qdq,
        export_onnx,
        int8_agreement,
        quantize_int8,
    )

    if batch != "dynamic":
        _fail("--batch: only 'dynamic' is supported", 2)
    model, cfg = _load(model_path)
    size = size or (cfg.scene_size if mode == ModeOpt.scene else cfg.crop_size)
    if mode == ModeOpt.scene and size % 32:
        _fail(f"--size must be a multiple of 32 in scene mode, got {size}", 2)
    check, n_real = _export_images(images, calib_data, 8, size, mode.value, "the ONNX Runtime parity check")
    fp32 = out if int8 == Int8Opt.none else out.with_name(out.stem + ".fp32.onnx")
    try:
        parity = export_onnx(model, fp32, mode.value, size, top_k, opset, images=check)
        metrics = {"parity_fp32_vs_torch": parity, "parity_images_real": n_real}
        write_sidecar(fp32, "fp32", source=model_path, metrics=metrics, extra={"mode": mode.value, "size": size})
    except OnnxValidationError as error:
        _fail(f"export FAILED: {error}")
    except (OSError, RuntimeError) as error:  # e.g. a full disk: the previous file at --out is left as it was
        _fail(f"export FAILED: cannot write {fp32}: {str(error).strip().splitlines()[-1][:300]}")
    typer.echo(f"wrote {fp32}  parity vs PyTorch: " + ", ".join(f"{k} {v:.2e}" for k, v in parity.items()
                                                              if isinstance(v, float)))
    if int8 == Int8Opt.none:
        if val_data:
            _gate_and_report(val_data, val_limit, model, [fp32], {}, fp32)
        return
    overrides = None
    if int8 == Int8Opt.qat:
        from model.quantization import qat_overrides

        qat = torch.load(str(model_path), map_location="cpu", weights_only=True).get("qat")
        if not qat:
            _fail(f"{model_path} is not a QAT checkpoint (no 'qat' ranges); use --int8 calib", 2)
        overrides = qat_overrides(qat["ranges"], fp32)
        if qat.get("act") and qat["act"] != activation.value:
            typer.echo(f"warning: QAT was trained for {qat['act']} activations, exporting {activation.value}", err=True)
    calib, n_calib = _export_images(images, calib_data, num_calib, size, mode.value, "INT8 calibration")
    try:
        quantize_int8(fp32, out, calib, activation.value, overrides)
    except OnnxValidationError as error:
        _fail(f"INT8 export FAILED: {error}")
    agreement = int8_agreement(fp32, out, check)
    write_sidecar(out, f"int8-{int8.value}-{activation.value}", source=model_path,
                  metrics={"int8_vs_fp32": agreement, "calibration_images": n_calib, **count_qdq(out)},
                  extra={"mode": mode.value, "size": size, "fp32": fp32.name})
    typer.echo(f"wrote {out}  ({out.stat().st_size / 1e6:.3f} MB, {count_qdq(out)})  INT8 vs FP32: "
               + json.dumps(agreement))
    if val_data:
        variant = "int8_qat" if int8 == Int8Opt.qat else "int8_ptq"
        _gate_and_report(val_data, val_limit, model, [fp32], {variant: [out]}, out, gated=variant)


def _export_openvino(model_path: Path, out: Path, mode: ModeOpt, int8: Int8Opt, images: Path | None, num_calib: int,
                     activation: ActOpt, size: int | None, top_k: int | None, opset: int, calib_data: list[str] | None,
                     val_data: list[str] | None, val_limit: int | None) -> None:
    """`export --format openvino`: the ONNX graph(s) as --format onnx writes them, then the IR
    (``mouaadnet.runtime.openvino_export.export_ir``): X.fp32.onnx (+ X.qdq.onnx for qat) beside X.xml/X.bin."""
    from mouaadnet.runtime import openvino_available

    if out.suffix != ".xml":
        _fail(f"--format openvino writes an IR: --out must end with .xml, got {out}", 2)
    if not openvino_available():
        _fail("--format openvino needs the openvino package: pip install 'mouaadnet-ultra[openvino]'", 2)
    from mouaadnet.runtime.openvino_export import OpenVinoExportError, export_ir

    qdq = out.with_suffix(".qdq.onnx") if int8 == Int8Opt.qat else None
    onnx_out = qdq or out.with_suffix(".fp32.onnx")
    export(model_path, onnx_out, mode, Int8Opt.qat if qdq else Int8Opt.none, images, num_calib, activation, size,
           top_k, opset, "dynamic", calib_data, None, None, FormatOpt.onnx)
    fp32 = qdq.with_name(qdq.stem + ".fp32.onnx") if qdq else onnx_out
    model, cfg = _load(model_path)
    size = size or (cfg.scene_size if mode == ModeOpt.scene else cfg.crop_size)
    check, _ = _export_images(images, calib_data, 8, size, mode.value, "the OpenVINO agreement check")
    calib = None
    if int8 == Int8Opt.calib:
        calib, _ = _export_images(images, calib_data, num_calib, size, mode.value, "INT8 calibration")
    try:
        report = export_ir(fp32, out, check.numpy(), qdq=qdq, calibration=None if calib is None else calib.numpy(),
                           source=model_path, mode=mode.value, size=size)
    except OpenVinoExportError as error:
        _fail(f"OpenVINO export FAILED: {error}")
    typer.echo(f"wrote {out} + {out.with_suffix('.bin').name}  ({report['ir_mb']:.3f} MB, {report['precision']})  "
               f"OpenVINO f32 vs ONNX Runtime FP32: " + json.dumps(report["agreement"]))
    if val_data:
        from mouaadnet.evaluation.gates import openvino_variants

        _gate_and_report(val_data, val_limit, model, [fp32], {}, out, openvino=openvino_variants([out], (None,)))


def _gate_and_report(val_data: list[str], limit: int | None, model, fp32: list[Path], int8: dict[str, list[Path]],
                     sidecar_of: Path, gated: str = "int8_qat", as_json: bool = False, openvino: dict | None = None,
                     choose: Path | None = None, config: Path | None = None) -> None:
    """Evaluate and print the gates; add them to ``sidecar_of``'s JSON sidecar; exit 1 when one fails.
    ``choose``: also time the variants that passed and write the runtime choice in that folder."""
    from model.artifacts import sidecar_path
    from mouaadnet.evaluation.gates import load_eval_sets, run_gates

    try:
        report = run_gates(load_eval_sets(val_data, limit, config), model, fp32, int8, gated=gated, openvino=openvino)
    except (ValueError, FileNotFoundError) as error:
        _fail(f"gates: {error}", 2)
    typer.echo(json.dumps(report.to_dict(), indent=2, default=float) if as_json else report.format())
    if sidecar_of is not None and sidecar_path(sidecar_of).is_file():
        data = json.loads(sidecar_path(sidecar_of).read_text())
        data.setdefault("metrics", {})["gates"] = report.to_dict()
        sidecar_path(sidecar_of).write_text(json.dumps(data, indent=2, default=float) + "\n")
    if choose is not None:
        path = _write_runtime_choice(report, fp32, int8, openvino or {}, choose, as_json)
        typer.echo(f"wrote {path}", err=as_json)
    if not report.passed:
        raise typer.Exit(1)


def _write_runtime_choice(report, fp32: list[Path], int8: dict[str, list[Path]], openvino: dict, folder: Path,
                          quiet_stdout: bool = False) -> Path:
    """Time every variant of ``report`` per mode, keep those whose gates all passed, record the fastest."""
    import os

    from mouaadnet.runtime.choice import Candidate, time_candidates, write_choice
    from mouaadnet.runtime.session import open_model

    def mode_of(path: Path) -> str:
        return open_model(path, "openvino" if path.suffix == ".xml" else "onnxruntime", None, 1).mode

    variants = ["fp32", *int8, *openvino]
    failed_of: dict[str, list[str]] = {v: [] for v in variants}
    for gate in report.gates:
        # accuracy rows count even where only reported (PTQ); a size row only where enforced (not an IR's)
        if gate.passed or (not gate.enforced and gate.name.endswith("_file_mb")):
            continue
        owner = "fp32" if gate.name.startswith("fp32_vs_pytorch") else \
            max((v for v in variants if gate.name.startswith(v + "_")), key=len, default=None)
        if owner is not None:
            failed_of[owner].append(gate.name)
    entries = [("fp32", p, "onnxruntime", None) for p in fp32]
    entries += [(v, p, "onnxruntime", None) for v, files in int8.items() for p in files]
    entries += [(v, Path(p), "openvino", spec.precision) for v, spec in openvino.items() for p in spec.files]
    candidates = [Candidate(mode_of(Path(p)), v, runtime, precision, os.path.relpath(p, folder),
                            not failed_of.get(v), failed_gates=failed_of.get(v, []))
                  for v, p, runtime, precision in entries]
    time_candidates(candidates, folder)
    references = {mode_of(p): os.path.relpath(p, folder) for p in fp32}
    for c in candidates:
        typer.echo(f"runtime choice: {c.mode:<5} {c.variant:<14} {c.runtime:<11} {c.precision or '-':<5} "
                   f"p50 {c.p50_ms:6.2f} ms  {'passed' if c.passed else 'FAILED ' + ', '.join(c.failed_gates)}",
                   err=quiet_stdout)
    return write_choice(folder, candidates, references)


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
    if not data and config is None:
        _fail("give --data SOURCE (repeatable) and/or --config TRAINING_CONFIG", 2)
    model = _load(checkpoint)[0] if checkpoint is not None else None
    variants = {"int8_qat": list(int8 or []), "int8_ptq": list(ptq or [])}
    ov_variants = None
    if openvino:
        from mouaadnet.evaluation.gates import openvino_variants
        from mouaadnet.runtime import RuntimeLoadError, openvino_available

        if not openvino_available():
            _fail("--openvino needs the openvino package: pip install 'mouaadnet-ultra[openvino]'", 2)
        precisions = [None if p == OvPrecisionOpt.default else p.value for p in (ov_precision or [OvPrecisionOpt.default])]
        try:
            ov_variants = openvino_variants(openvino, list(dict.fromkeys(precisions)))
        except RuntimeLoadError as error:
            _fail(f"gates: {error}", 2)
    if choose and not fp32:
        _fail("--choose needs the --fp32 graph(s): the choice is recorded beside them", 2)
    _gate_and_report(list(data or []), limit, model, list(fp32 or []), variants, None, as_json=as_json,
                     openvino=ov_variants, choose=Path(fp32[0]).parent if choose else None, config=config)


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
    from mouaadnet.training.checkpoint import CheckpointError
    from mouaadnet.training.config import SourceConfig, TrainConfig
    from mouaadnet.training.qat import run_qat
    from mouaadnet.training.sources import sources_by_mode

    if config is not None:
        cfg = _load_train_config(config, data, None)
    elif data:
        cfg = TrainConfig()
        scene, crop = sources_by_mode(data)
        cfg.data.scene = [SourceConfig(path=p) for p in scene]
        cfg.data.crop = [SourceConfig(path=p) for p in crop]
    else:
        _fail("qat: give --data and/or --config", 2)
    try:
        summary = run_qat(checkpoint, cfg, out, steps=steps, lr=lr, calib_steps=calib_steps, act=activation.value,
                          freeze_bn_fraction=freeze_bn_fraction,
                          progress=not quiet, placement=placement.value)
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        _fail(f"qat failed: {error}", 2)
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
        _fail(f"compile-trt: {error}", EXIT_TENSORRT_MISSING)
    except (ValueError, RuntimeError) as error:
        _fail(f"compile-trt FAILED: {error}")
    write_sidecar(plan, precision.value, source=onnx_path, io=io, extra={"max_batch": max_batch})
    typer.echo(f"wrote {plan}")


def bench(
    config: Annotated[Path | None, typer.Option(help="Model config YAML (default: built-in).")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint (default: random weights; speed is "
                                                         "weight-independent).")] = None,
    images: Annotated[Path | None, typer.Option(help="Calibration images for the INT8 model.")] = None,
    runs: Annotated[int, typer.Option(help="Timed runs per setting (>= 200 for reported numbers).")] = 200,
    warmup: Annotated[int, typer.Option(help="Warm-up runs per setting.")] = 20,
    quick: Annotated[bool, typer.Option(help="Tiny smoke setting (64/32 px, batch 1, 1 thread, 5 runs).")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the Markdown table here.")] = None,
    as_json: Annotated[Path | None, typer.Option("--json", help="Also write raw results as JSON here.")] = None,
    backend: Annotated[list[str] | None, typer.Option(
        help="Backends to run (repeatable; default all): torch-train, torch-deploy, ort-fp32, ort-int8, ov-f32, "
             "ov-bf16, ov-int8.")] = None,
    batch: Annotated[list[int] | None, typer.Option(help="Batch sizes (repeatable; default 1 and 8).")] = None,
    threads: Annotated[list[int] | None, typer.Option(help="Thread counts (repeatable; default 1 and 2).")] = None,
    peer: Annotated[bool, typer.Option(help="Also the YOLOv8n-architecture peer, interleaved with ours.")] = True,
    rss: Annotated[bool, typer.Option(help="Peak RSS per runtime (a fresh process each).")] = True,
) -> None:
    """Latency p50/p90 and throughput of PyTorch, ONNX Runtime (FP32, INT8) and OpenVINO (f32, bf16, NNCF INT8),
    ours and the peer interleaved; the best runtime per model, ours/peer at each side's best, RSS per runtime."""
    from mouaadnet.bench.inference import DEFAULT_BACKENDS, markdown, run_bench

    unknown = sorted(set(backend or []) - set(DEFAULT_BACKENDS))
    if unknown:
        _fail(f"--backend: unknown {unknown}; choose from {', '.join(DEFAULT_BACKENDS)}", 2)

    cfg = model = None
    if checkpoint is not None:
        model, cfg = _load(checkpoint)
    elif config is not None:
        from model import ConfigError, ModelConfig

        try:
            cfg = ModelConfig.from_yaml(config)
        except ConfigError as error:
            _fail(str(error), 2)
    kwargs: dict = {"runs": runs, "warmup": warmup, "peer": peer, "rss": rss}
    if quick:
        kwargs.update({"runs": 5, "warmup": 1, "sizes": {"scene": 64, "crop": 32}, "batches": (1,), "threads": (1,)})
    if backend:
        kwargs["backends"] = tuple(backend)
    if batch:
        kwargs["batches"] = tuple(batch)
    if threads:
        kwargs["threads"] = tuple(threads)
    calib = None
    if images is not None:
        from model import ModelConfig

        calib, _ = _images(images, 64, (cfg or ModelConfig()).scene_size, "INT8 calibration")
    result = run_bench(cfg, model, calibration=calib, **kwargs)
    table = markdown(result)
    typer.echo(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")
    if as_json:
        as_json.write_text(json.dumps(result, indent=2) + "\n")


def profile(
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint to export (speed does not depend on the "
                                                         "weights; default: --onnx).")] = None,
    onnx: Annotated[Path | None, typer.Option(help="An exported FP32 scene graph instead of --checkpoint.")] = None,
    size: Annotated[int, typer.Option(help="Scene input size (multiple of 32).")] = 320,
    runs: Annotated[int, typer.Option(help="Profiled inferences per runtime.")] = 100,
    threads: Annotated[int, typer.Option(help="Intra-op threads.")] = 1,
    int8: Annotated[bool, typer.Option(help="Also ORT's INT8 QDQ graph and OpenVINO's NNCF INT8 (random "
                                            "calibration: speed only).")] = True,
    top: Annotated[int, typer.Option(help="Slowest layers listed per runtime.")] = 25,
    out: Annotated[Path | None, typer.Option(help="Also write the Markdown here.")] = None,
    as_json: Annotated[Path | None, typer.Option("--json", help="Also write the raw profile as JSON here.")] = None,
) -> None:
    """Per-layer profile of the scene graph: ONNX Runtime's profiler and OpenVINO's performance counters (f32, bf16,
    INT8): time by op type and by block, slowest layers with FLOPs, FLOP/byte and memory- vs compute-bound."""
    import tempfile

    from mouaadnet.bench.profile import markdown, run_profile
    from mouaadnet.runtime import openvino_available

    if (checkpoint is None) == (onnx is None):
        _fail("profile: give --checkpoint or --onnx", 2)
    if not openvino_available():
        _fail("profile needs the openvino package: pip install 'mouaadnet-ultra[openvino]'", 2)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = onnx
        if checkpoint is not None:
            from model.export import export_onnx

            model, _ = _load(checkpoint)
            fp32 = Path(tmp) / f"scene{size}.onnx"
            export_onnx(model, fp32, "scene", size)
        int8_onnx = ov_int8 = None
        if int8:
            import torch

            from model.export import quantize_int8
            from mouaadnet.runtime.openvino_export import quantize_openvino

            calib = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(0))
            int8_onnx = quantize_int8(fp32, Path(tmp) / "int8.onnx", calib)
            ov_int8 = quantize_openvino(fp32, Path(tmp) / "ov-int8.xml", calib.numpy())
        result = run_profile(fp32, size, runs, threads, int8_onnx, ov_int8)
    load = result["load_average"]
    text = "\n\n".join([f"Scene {size}x{size}, batch 1, {threads} thread(s), {runs} profiled runs each; load average "
                         f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end." if load else ""]
                        + [markdown(name, summary, top) for name, summary in result["profiles"].items()])
    typer.echo(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    if as_json:
        as_json.write_text(json.dumps(result, indent=1, default=float) + "\n")


def register(app: typer.Typer) -> None:
    """Add reparam, qat, export, gates, compile-trt and bench to the `mouaadnet` app."""
    app.command()(reparam)
    app.command()(qat)
    app.command()(export)
    app.command()(gates)
    app.command("compile-trt")(compile_trt_cmd)
    app.command()(bench)
    app.command()(profile)
