"""Quality gates for exported models (issue 4), printed by `export --val-data` / `gates`, used by the pipeline.

Every model variant is measured on the validation sets by ``mouaadnet.evaluation.evaluate.evaluate_sets`` (PyTorch models
directly, ONNX files through ``mouaadnet.evaluation.onnx_eval.OnnxModel``), so the gates compare numbers from one metric
implementation. Gates (fractions: 1 point = 0.01):

- ``fp32_vs_pytorch <metric>``: the FP32 ONNX graph gives the PyTorch model's AP50, gender accuracy and age MAE
  (|diff| <= 0.005, i.e. one decision in 200, and <= 0.05 years: only float rounding may differ);
- ``int8_ap50_drop``: person AP50 of INT8 at most 1 point below FP32 (scene sets);
- ``int8_gender_drop``: gender accuracy at most 1 point below FP32;
- ``int8_age_mae_rise``: age MAE at most 0.3 years above FP32;
- ``int8_file_mb``: every INT8 ONNX file <= 1.0 MB (10^6 bytes).

OpenVINO variants (``openvino_variants``: "ov_fp32_bf16" = the FP32 graph run with OpenVINO's bf16 inference
precision, "ov_int8_bf16" = an NNCF INT8 IR, "ov_fp32_f32", ...) get the three INT8 accuracy gates against the
same ORT FP32 metrics, enforced: bf16 changes numbers like INT8 does. Their file-size row (IR .xml + .bin) is
reported, not enforced: the 1 MB target is the INT8 ONNX file's.

Gender and age gates read the crop sets when there are any (every crop is labelled and the number does not
depend on which people were detected); otherwise the attributes of detected people on the scene sets. The INT8
gates apply to the gated variant ("int8_qat" by default); other INT8 variants ("int8_ptq") get the same rows
with ``enforced=False``: reported beside, never failing the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mouaadnet.data.types import EvalSet
from mouaadnet.evaluation.evaluate import evaluate_sets

FP32_TOLERANCE = {"AP50": 0.005, "gender_accuracy": 0.005, "age_mae": 0.05}
INT8_MAX_AP50_DROP = 0.01
INT8_MAX_GENDER_DROP = 0.01
INT8_MAX_AGE_MAE_RISE = 0.3
INT8_MAX_MB = 1.0
GATED_METRICS = ("AP50", "gender_accuracy", "age_mae")
OPENVINO_PREFIX = "ov_"  # variants run in OpenVINO (``openvino_variants``)

Metrics = dict[str, dict[str, Any]]  # set name -> metric -> value


@dataclass
class Gate:
    name: str
    passed: bool
    value: float | None  # the measured quantity (a drop, a rise, a size, a max abs diff)
    limit: float
    detail: str = ""
    enforced: bool = True  # False: reported only (PTQ beside QAT)

    @property
    def status(self) -> str:
        return ("PASS" if self.passed else "FAIL") if self.enforced else ("ok" if self.passed else "over")


@dataclass
class GateReport:
    gates: list[Gate]
    metrics: dict[str, Metrics] = field(default_factory=dict)  # variant -> set -> metrics
    modes: dict[str, str] = field(default_factory=dict)  # set name -> scene / crop

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates if g.enforced)

    @property
    def failed(self) -> list[Gate]:
        return [g for g in self.gates if g.enforced and not g.passed]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "gates": [asdict(g) | {"status": g.status} for g in self.gates],
                "metrics": {variant: {name: {k: v for k, v in m.items() if k in GATED_METRICS or k == "count_images"}
                                      for name, m in sets.items()} for variant, sets in self.metrics.items()},
                "modes": self.modes}

    def format(self) -> str:
        lines = ["metrics:  variant         set               AP50   gender_acc  age_mae"]
        for variant, sets in self.metrics.items():
            for name, m in sets.items():
                lines.append(f"          {variant:<15} {name:<16} {_fmt(m.get('AP50'))}  {_fmt(m.get('gender_accuracy'))}"
                             f"      {_fmt(m.get('age_mae'), 3)}")
        lines.append("gates:")
        for g in self.gates:
            value = "n/a" if g.value is None else f"{g.value:.4f}"
            lines.append(f"  [{g.status:>4}] {g.name:<34} {value:>9}  (limit {g.limit:g})  {g.detail}")
        lines.append(f"gates {'PASSED' if self.passed else 'FAILED: ' + ', '.join(g.name for g in self.failed)}")
        return "\n".join(lines)


def variant_passed(report: GateReport, variant: str) -> bool:
    """Every gate of one INT8 variant passed (enforced or reported beside), and so did the FP32 ones."""
    own = [g for g in report.gates if g.name.startswith(f"{variant}_")]
    fp32 = [g for g in report.gates if g.name.startswith("fp32_")]
    return bool(own) and all(g.passed for g in own + fp32)


def with_gated(report: GateReport, variant: str) -> GateReport:
    """The same measurements with ``variant``'s INT8 gates enforced and the other INT8 variants' reported beside."""
    gates = [replace(g, enforced=g.name.startswith(f"{variant}_")) if g.name.startswith("int8") else g
             for g in report.gates]
    return GateReport(gates, report.metrics, report.modes)


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "   -  "


def _value(metrics: Metrics, name: str, key: str) -> float:
    v = metrics.get(name, {}).get(key)
    return float(v) if isinstance(v, (int, float)) else math.nan


def _compare(reference: Metrics, candidate: Metrics, key: str, sets: Sequence[str], sign: int) -> tuple[float | None, str]:
    """Worst ``sign * (candidate - reference)`` over ``sets``; inf when one side has a number and the other not."""
    worst, where = None, ""
    for name in sets:
        a, b = _value(reference, name, key), _value(candidate, name, key)
        if math.isnan(a) and math.isnan(b):
            continue
        d = math.inf if math.isnan(a) or math.isnan(b) else sign * (b - a)
        if worst is None or d > worst:
            worst, where = d, name
    return worst, where


def attribute_sets(modes: dict[str, str]) -> list[str]:
    """Sets whose gender/age metrics are gated: the crop sets if any, else the scene sets."""
    crops = [n for n, m in modes.items() if m == "crop"]
    return crops or [n for n, m in modes.items() if m == "scene"]


def check_gates(metrics: dict[str, Metrics], modes: dict[str, str], int8_files: dict[str, Sequence[str | Path]] | None = None,
                gated: str = "int8_qat") -> GateReport:
    """Gates from measured metrics. ``metrics``: variant -> set -> metrics, variants among "pytorch", "fp32" and
    INT8 ones whose names start with "int8" ("int8_qat", "int8_ptq"); ``modes``: set name -> "scene"/"crop";
    ``int8_files``: variant -> its ONNX files (size gate). Gates whose inputs are missing are left out."""
    gates: list[Gate] = []
    scene_sets = [n for n, m in modes.items() if m == "scene"]
    attr_sets = attribute_sets(modes)
    fp32 = metrics.get("fp32")
    if fp32 is not None and "pytorch" in metrics:
        for key, tol in FP32_TOLERANCE.items():
            diffs = [abs(_value(fp32, n, key) - _value(metrics["pytorch"], n, key)) for n in modes
                     if not (math.isnan(_value(fp32, n, key)) and math.isnan(_value(metrics["pytorch"], n, key)))]
            diffs = [math.inf if math.isnan(d) else d for d in diffs]
            if diffs:
                worst = max(diffs)
                gates.append(Gate(f"fp32_vs_pytorch {key}", worst <= tol, worst, tol, "max |ONNX FP32 - PyTorch| over sets"))
    int8_variants = sorted((v for v in metrics if v.startswith(("int8", OPENVINO_PREFIX))),
                           key=lambda v: (v != gated, v.startswith(OPENVINO_PREFIX), v))
    for variant in int8_variants:
        enforced = variant == gated or variant.startswith(OPENVINO_PREFIX)
        if fp32 is not None:
            checks = (("ap50_drop", "AP50", scene_sets, -1, INT8_MAX_AP50_DROP),
                      ("gender_drop", "gender_accuracy", attr_sets, -1, INT8_MAX_GENDER_DROP),
                      ("age_mae_rise", "age_mae", attr_sets, +1, INT8_MAX_AGE_MAE_RISE))
            for suffix, key, sets, sign, limit in checks:
                worst, where = _compare(fp32, metrics[variant], key, sets, sign)
                if worst is not None:
                    gates.append(Gate(f"{variant}_{suffix}", worst <= limit, worst, limit,
                                      f"{key} vs FP32, worst set {where}", enforced))
        files = (int8_files or {}).get(variant) or []
        if files and "int8" in variant:
            sizes = {Path(p).name: _file_mb(p) for p in files}
            biggest = max(sizes, key=sizes.get)
            openvino = variant.startswith(OPENVINO_PREFIX)
            gates.append(Gate(f"{variant}_file_mb", sizes[biggest] <= INT8_MAX_MB, sizes[biggest], INT8_MAX_MB,
                              f"largest: {biggest}" + (" (IR .xml + .bin)" if openvino else ""),
                              enforced and not openvino))
    return GateReport(gates, metrics, modes)


def _file_mb(path: str | Path) -> float:
    """Size in MB (10^6 bytes); an OpenVINO IR counts its .xml and .bin."""
    path = Path(path)
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
    return sum(p.stat().st_size for p in files if p.is_file()) / 1e6


@dataclass
class RuntimeFiles:
    """Model files (scene and/or crop) to evaluate in ``runtime`` at OpenVINO inference ``precision``."""

    files: list[str | Path]
    runtime: str = "openvino"
    precision: str | None = None


def openvino_variants(files: Sequence[str | Path], precisions: Sequence[str | None] = (None,)) -> dict[str, RuntimeFiles]:
    """Gate variants for OpenVINO: the files grouped into FP32 graphs and INT8 graphs (NNCF IR or QDQ ONNX),
    each run at every precision of ``precisions`` ("f32", "bf16", None = OpenVINO's default on this CPU,
    resolved in the name): {"ov_fp32_bf16": RuntimeFiles([...]), "ov_int8_bf16": ...}."""
    from mouaadnet.runtime import is_quantized, openvino_default_precision

    kinds: dict[str, list[str | Path]] = {}
    for path in files:
        kinds.setdefault("int8" if is_quantized(path) else "fp32", []).append(path)
    out = {}
    for precision in precisions:
        name = precision or openvino_default_precision()
        for kind, paths in kinds.items():
            out[f"{OPENVINO_PREFIX}{kind}_{name}"] = RuntimeFiles(list(paths), "openvino", name)
    return out


def evaluate_variants(variants: dict[str, Any], eval_sets: list[EvalSet], scene_size: int, crop_size: int,
                      threshold: float = 0.3, threads: int = 2) -> dict[str, Metrics]:
    """Metrics of every variant on the sets it can run: a PyTorch model (all sets), a list of ONNX files (ONNX
    Runtime) or ``RuntimeFiles`` (the sets of the modes it has, at the graph's input size)."""
    from mouaadnet.evaluation.onnx_eval import OnnxModel

    def load(m):
        if isinstance(m, RuntimeFiles):
            return OnnxModel(m.files, threads=threads, runtime=m.runtime, precision=m.precision)
        return OnnxModel(m, threads=threads) if isinstance(m, (list, tuple)) else m.eval()

    models = {v: load(m) for v, m in variants.items() if m is not None}
    sizes = {"scene": scene_size, "crop": crop_size}
    for m in models.values():  # every variant at the exported input size, PyTorch included
        sizes.update({mode: s for mode, s in getattr(m, "sizes", {}).items() if s})
    results: dict[str, Metrics] = {}
    for variant, model in models.items():
        sets = [s for s in eval_sets if s.mode in model.modes] if isinstance(model, OnnxModel) else eval_sets
        results[variant] = {r.name: r.metrics for r in evaluate_sets(model, sets, sizes["scene"], sizes["crop"],
                                                                      threshold=threshold)}
    return results


def run_gates(eval_sets: list[EvalSet], pytorch=None, fp32: Sequence[str | Path] = (),
              int8: dict[str, Sequence[str | Path]] | None = None, scene_size: int = 320, crop_size: int = 112,
              threshold: float = 0.3, gated: str = "int8_qat",
              openvino: dict[str, RuntimeFiles] | None = None) -> GateReport:
    """Evaluate and gate. ``pytorch``: the model (any form); ``fp32``: FP32 ONNX files (scene and/or crop);
    ``int8``: variant name ("int8_qat", "int8_ptq") -> its INT8 ONNX files; ``openvino``: variant name
    (``openvino_variants``) -> files and precision. Sets are limited to the modes the files cover, so a
    scene-only export is gated on the scene sets."""
    int8 = {k: list(v) for k, v in (int8 or {}).items() if v}
    openvino = {k: v for k, v in (openvino or {}).items() if v.files}
    variants: dict[str, Any] = {"pytorch": pytorch, "fp32": list(fp32) or None, **int8, **openvino}
    onnx_modes = _onnx_modes([*fp32, *(p for files in int8.values() for p in files),
                              *(p for v in openvino.values() for p in v.files)])
    if onnx_modes:
        eval_sets = [s for s in eval_sets if s.mode in onnx_modes]
    if not eval_sets:
        raise ValueError("no validation set matches the modes of the given models")
    metrics = evaluate_variants(variants, eval_sets, scene_size, crop_size, threshold)
    files = {**int8, **{k: list(v.files) for k, v in openvino.items()}}
    return check_gates(metrics, {s.name: s.mode for s in eval_sets}, files, gated)


def _onnx_modes(paths: Sequence[str | Path]) -> set[str]:
    import onnx

    modes = set()
    for p in paths:
        if Path(p).suffix == ".xml":  # OpenVINO IR
            import openvino as ov

            names = [o.get_any_name() for o in ov.Core().read_model(str(p)).outputs]
        else:
            names = [o.name for o in onnx.load(str(p), load_external_data=False).graph.output]
        modes.add("scene" if "boxes" in names else "crop")
    return modes


def load_eval_sets(specs: Sequence[str], limit: int | None = None, config: str | Path | None = None,
                   pasted: int | None = None, split: str = "val") -> list[EvalSet]:
    """Validation sets from source specs (as for `evaluate --data`; scene or crop mode detected per spec) and/or
    the validation splits of a training config (`--config`), each cut to ``limit`` samples; with ``pasted``, also
    that many of the config's scenes with its validation bodies pasted in (mouaadnet.evaluation.pasted).
    ``split="train"``: the config's training splits instead (``train-<source>``; ``limit`` of them drawn evenly at
    random, since a head of a sorted folder is one age), to show underfitting beside validation."""
    import numpy as np

    from mouaadnet.data.assembly import source_name, sources_by_mode, training_split, validation_splits
    from mouaadnet.data.config import DataSection
    from mouaadnet.data.sources import load_source
    from mouaadnet.evaluation.pasted import pasted_eval_set

    if pasted is not None and config is None:
        raise ValueError("a pasted validation set needs a training config")
    if split not in ("val", "train") or (split == "train" and pasted is not None):
        raise ValueError(f"split must be 'val' or 'train' (train: no pasted set), got {split!r}")
    sets: list[EvalSet] = []
    if config is not None and split == "train":
        cfg = DataSection.from_yaml(config)
        for mode, sources in (("scene", cfg.data.scene), ("crop", cfg.data.crop)):
            for source in sources:
                samples = training_split(source, cfg.seed)
                if limit is not None and len(samples) > limit:
                    keep = np.random.default_rng(cfg.seed).choice(len(samples), size=limit, replace=False)
                    samples = [samples[i] for i in sorted(keep)]
                sets.append(EvalSet(f"train-{source_name(source.path)}", mode, samples))
    elif config is not None:
        cfg = DataSection.from_yaml(config)
        splits = validation_splits(cfg.data, cfg.seed)
        sets = [EvalSet(s.name, s.mode, s.samples[:limit]) for _, s in splits]
        if pasted is not None:
            sets.append(pasted_eval_set(splits, cfg.data.paste, pasted, cfg.seed, cfg.model.scene_size))
    _, crop_specs = sources_by_mode(list(specs))
    taken = {s.name for s in sets}
    for spec in specs:
        name = source_name(spec)
        while name in taken:
            name += "_"
        taken.add(name)
        sets.append(EvalSet(name, "crop" if spec in crop_specs else "scene", load_source(spec).samples[:limit]))
    return sets
