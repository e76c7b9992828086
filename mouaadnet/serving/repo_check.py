"""Validate a Triton model repository without a server: `mouaadnet repo check triton_repo`.

Every `config.pbtxt` (and `configs/*.pbtxt` variant) is parsed with Triton's own protobuf schema
(`tritonclient.grpc.model_config_pb2` + `google.protobuf.text_format`) when available, else with a small
protobuf-text parser. Checks: name matches the folder, a backend/platform, numeric version folders, the files
each backend needs, every ONNX file's input/output names, dtypes and dims against the config, variants agreeing
with config.pbtxt, and the ensemble wiring (steps name existing models and their real tensors, every value is
produced before it is used, with matching dtype and dims, and every ensemble output is produced).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ONNX TensorProto element type -> Triton data type
ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
                  6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
                  11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16"}
MODEL_FILES = {"python": "model.py", "onnxruntime": "model.onnx", "onnxruntime_onnx": "model.onnx",
               "tensorrt": "model.plan", "tensorrt_plan": "model.plan"}


class ConfigParseError(ValueError):
    pass


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


# ---------------------------------------------------------------- parsing
def _parse_with_protobuf(text: str) -> dict | None:
    try:
        from google.protobuf import json_format, text_format
        from tritonclient.grpc import model_config_pb2
    except Exception:
        return None
    try:
        message = text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as error:
        raise ConfigParseError(str(error)) from None
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


_TOKEN = re.compile(r'\s+|#[^\n]*|(?P<str>"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')|(?P<punct>[{}\[\]:,;<>])|'
                    r'(?P<word>[A-Za-z0-9_.+\-]+)')
REPEATED = {"input", "output", "dims", "step", "instance_group", "preferred_batch_size", "input_map",
            "output_map", "gpus", "reshape", "label_filename"}


def _tokens(text: str):
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ConfigParseError(f"line {line}: unexpected character {text[pos]!r}")
        if m.lastgroup:
            yield m.lastgroup, m.group(m.lastgroup), line
        line += m.group(0).count("\n")
        pos = m.end()


def _scalar(kind: str, value: str) -> Any:
    if kind == "str":
        return bytes(value[1:-1], "utf-8").decode("unicode_escape")
    if re.fullmatch(r"[+-]?\d+", value):
        return int(value)
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value):
        return float(value)
    return {"true": True, "false": False}.get(value, value)


def parse_pbtxt(text: str) -> dict:
    """Minimal protobuf text-format parser (fallback): returns nested dicts; map fields become dicts."""
    toks = list(_tokens(text))
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else (None, None, toks[-1][2] if toks else 0)

    def take(expect: str | None = None):
        nonlocal pos
        kind, value, line = peek()
        if kind is None:
            raise ConfigParseError("unexpected end of file")
        if expect is not None and value != expect:
            raise ConfigParseError(f"line {line}: expected {expect!r}, got {value!r}")
        pos += 1
        return kind, value, line

    def message(close: str | None) -> dict:
        out: dict = {}
        while True:
            kind, value, line = peek()
            if kind is None:
                if close:
                    raise ConfigParseError(f"missing {close!r} at end of file")
                return out
            if value == close:
                take()
                return out
            if value in (",", ";"):
                take()
                continue
            if kind != "word":
                raise ConfigParseError(f"line {line}: expected a field name, got {value!r}")
            name = take()[1]
            if peek()[1] == ":":
                take()
            values = field_values()
            if name in ("input_map", "output_map", "parameters"):
                for entry in values:
                    if not isinstance(entry, dict) or "key" not in entry:
                        raise ConfigParseError(f"line {line}: {name} entries need key and value")
                    out.setdefault(name, {})[entry["key"]] = entry.get("value")
            elif name in out or name in REPEATED:
                existing = out.setdefault(name, [])
                if not isinstance(existing, list):
                    out[name] = existing = [existing]
                existing.extend(values)
            else:
                out[name] = values[0] if len(values) == 1 else values

    def single():
        kind, value, line = peek()
        if value in ("{", "<"):
            take()
            return message("}" if value == "{" else ">")
        if kind in ("word", "str"):
            take()
            return _scalar(kind, value)
        raise ConfigParseError(f"line {line}: expected a value, got {value!r}")

    def field_values() -> list:
        if peek()[1] == "[":
            take()
            items = []
            while peek()[1] != "]":
                items.append(single())
                if peek()[1] == ",":
                    take()
            take("]")
            return items
        return [single()]

    return message(None)


def _normalise(cfg: dict) -> dict:
    """Bring both parsers' output to one shape: lists for repeated fields, ints for dims, plain map values."""
    def dims(values):
        return [int(v) for v in (values or [])]

    out = dict(cfg)
    out["max_batch_size"] = int(cfg.get("max_batch_size", 0) or 0)
    for key in ("input", "output"):
        tensors = cfg.get(key, [])
        tensors = tensors if isinstance(tensors, list) else [tensors]
        out[key] = [{**t, "dims": dims(t.get("dims")), "data_type": t.get("data_type", "TYPE_INVALID"),
                     "optional": bool(t.get("optional", False))} for t in tensors]
    params = cfg.get("parameters", {}) or {}
    out["parameters"] = {k: (v.get("string_value") if isinstance(v, dict) else v) for k, v in params.items()}
    steps = (cfg.get("ensemble_scheduling") or {}).get("step", [])
    steps = steps if isinstance(steps, list) else [steps]
    out["steps"] = [{"model_name": s.get("model_name", ""), "model_version": int(s.get("model_version", -1)),
                     "input_map": dict(s.get("input_map", {}) or {}), "output_map": dict(s.get("output_map", {}) or {})}
                    for s in steps]
    return out


def load_config(path: str | Path, use_protobuf: bool = True) -> dict:
    text = Path(path).read_text()
    parsed = _parse_with_protobuf(text) if use_protobuf else None
    if parsed is None:
        parsed = parse_pbtxt(text)
    return _normalise(parsed)


# ---------------------------------------------------------------- checks
def _full_dims(cfg: dict, dims: list[int]) -> list[int]:
    return ([-1] + dims) if cfg["max_batch_size"] > 0 else dims


def _dims_match(expected: list[int], actual: list) -> bool:
    if len(expected) != len(actual):
        return False
    return all(e == -1 or a is None or isinstance(a, str) or a == -1 or e == a for e, a in zip(expected, actual))


def onnx_signature(path: str | Path) -> tuple[dict, dict]:
    """{name: (triton dtype, dims with None for dynamic)} for graph inputs (minus initializers) and outputs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def describe(values):
        out = {}
        for v in values:
            if v.name in initializers:
                continue
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
            out[v.name] = (ONNX_TO_TRITON.get(t.elem_type, f"ONNX_TYPE_{t.elem_type}"), dims)
        return out

    return describe(model.graph.input), describe(model.graph.output)


def check_onnx_against_config(onnx_path: str | Path, cfg: dict, where: str) -> list[str]:
    problems: list[str] = []
    try:
        inputs, outputs = onnx_signature(onnx_path)
    except ImportError:
        return problems
    except Exception as error:
        return [f"{onnx_path}: not a readable ONNX file ({error})"]
    for kind, declared, actual in (("input", cfg["input"], inputs), ("output", cfg["output"], outputs)):
        names = {t["name"] for t in declared}
        for tensor in declared:
            name = tensor["name"]
            if name not in actual:
                problems.append(f"{where}: {kind} '{name}' is not an {kind} of {onnx_path} "
                                f"(it has {', '.join(sorted(actual)) or 'none'})")
                continue
            dtype, dims = actual[name]
            if dtype != tensor["data_type"]:
                problems.append(f"{where}: {kind} '{name}' data_type {tensor['data_type']} but {onnx_path} "
                                f"has {dtype}")
            full = _full_dims(cfg, tensor["dims"])
            if not _dims_match(full, dims):
                problems.append(f"{where}: {kind} '{name}' dims {full} (batch dim first when max_batch_size "
                                f"> 0) but {onnx_path} has {dims}")
        for name in sorted(set(actual) - names):
            if kind == "input":
                problems.append(f"{where}: {onnx_path} input '{name}' is not declared in the config")
    return problems


def _tensor_map(tensors: list[dict]) -> dict[str, dict]:
    return {t["name"]: t for t in tensors}


def _check_ensemble(name: str, cfg: dict, configs: dict[str, dict], where: str) -> list[str]:
    problems: list[str] = []
    if not cfg["steps"]:
        return [f"{where}: ensemble has no ensemble_scheduling steps"]
    available = {t["name"]: (t["data_type"], t["dims"], f"ensemble input '{t['name']}'") for t in cfg["input"]}
    produced_outputs: set[str] = set()
    for i, step in enumerate(cfg["steps"]):
        label = f"{where}: step {i} ({step['model_name'] or '?'})"
        sub = configs.get(step["model_name"])
        if sub is None:
            problems.append(f"{label}: model '{step['model_name']}' is not in the repository")
            continue
        if sub["max_batch_size"] == 0 and cfg["max_batch_size"] > 0:
            problems.append(f"{label}: the ensemble batches (max_batch_size {cfg['max_batch_size']}) but this "
                            "model does not (max_batch_size 0)")
        ins, outs = _tensor_map(sub["input"]), _tensor_map(sub["output"])
        for key, value in step["input_map"].items():
            if key not in ins:
                problems.append(f"{label}: input_map key '{key}' is not an input of '{step['model_name']}' "
                                f"(inputs: {', '.join(ins)})")
                continue
            if value not in available:
                problems.append(f"{label}: input_map '{key}' <- '{value}', but no ensemble input or earlier step "
                                "output is called that (missing tensor)")
                continue
            dtype, dims, origin = available[value]
            if dtype != ins[key]["data_type"]:
                problems.append(f"{label}: input '{key}' is {ins[key]['data_type']} but {origin} is {dtype}")
            elif dims != ins[key]["dims"] and -1 not in dims + ins[key]["dims"]:
                problems.append(f"{label}: input '{key}' dims {ins[key]['dims']} but {origin} has dims {dims}")
        for key, tensor in ins.items():
            if key not in step["input_map"] and not tensor["optional"]:
                problems.append(f"{label}: required input '{key}' of '{step['model_name']}' is not mapped")
        for key, value in step["output_map"].items():
            if key not in outs:
                problems.append(f"{label}: output_map key '{key}' is not an output of '{step['model_name']}' "
                                f"(outputs: {', '.join(outs)})")
                continue
            if value in available:
                problems.append(f"{label}: tensor '{value}' is produced twice")
            available[value] = (outs[key]["data_type"], outs[key]["dims"], f"step {i} output '{key}'")
            produced_outputs.add(value)
    for out in cfg["output"]:
        if out["name"] not in produced_outputs:
            problems.append(f"{where}: ensemble output '{out['name']}' is not produced by any step")
            continue
        dtype, dims, origin = available[out["name"]]
        if dtype != out["data_type"]:
            problems.append(f"{where}: ensemble output '{out['name']}' is {out['data_type']} but {origin} is {dtype}")
        elif dims != out["dims"] and -1 not in dims + out["dims"]:
            problems.append(f"{where}: ensemble output '{out['name']}' dims {out['dims']} but {origin} has {dims}")
    return problems


def _signature(cfg: dict) -> tuple:
    return (cfg["max_batch_size"],
            tuple((t["name"], t["data_type"], tuple(t["dims"])) for t in cfg["input"]),
            tuple((t["name"], t["data_type"], tuple(t["dims"])) for t in cfg["output"]))


RUNTIME_PARAMETERS = {"runtime": ("auto", "onnxruntime", "openvino"), "precision": ("default", "f32", "bf16")}


def _check_runtime_parameters(cfg: dict, where: str) -> list[str]:
    """The Python-backend detector's `runtime`/`precision` parameters (``mouaadnet.runtime``) take known values."""
    params = cfg.get("parameters") or {}
    return [f"{where}: parameter {key} = {params[key]!r}; expected one of {allowed}"
            for key, allowed in RUNTIME_PARAMETERS.items() if key in params and params[key] not in allowed]


def check_repo(repo: str | Path, use_protobuf: bool = True) -> Report:
    repo = Path(repo)
    report = Report()
    if not repo.is_dir():
        report.errors.append(f"{repo}: no such model repository")
        return report
    configs: dict[str, dict] = {}
    model_dirs = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if not model_dirs:
        report.errors.append(f"{repo}: no model folders")
    for model_dir in model_dirs:
        path = model_dir / "config.pbtxt"
        if not path.is_file():
            report.errors.append(f"{model_dir}: no config.pbtxt")
            continue
        try:
            cfg = load_config(path, use_protobuf)
        except (ConfigParseError, ValueError, TypeError) as error:
            report.errors.append(f"{path}: cannot parse: {error}")
            continue
        configs[model_dir.name] = cfg
        report.models.append(model_dir.name)
    for name, cfg in configs.items():
        model_dir = repo / name
        where = str(model_dir / "config.pbtxt")
        if cfg.get("name", name) != name:
            report.errors.append(f"{where}: name '{cfg.get('name')}' does not match its folder '{name}'")
        backend = cfg.get("backend") or cfg.get("platform")
        if not backend:
            report.errors.append(f"{where}: neither backend nor platform is set")
        if cfg["max_batch_size"] < 0:
            report.errors.append(f"{where}: max_batch_size must be >= 0")
        for kind in ("input", "output"):
            seen = set()
            for t in cfg[kind]:
                if t["name"] in seen:
                    report.errors.append(f"{where}: {kind} '{t['name']}' declared twice")
                seen.add(t["name"])
                if t["data_type"] in ("TYPE_INVALID", "", None):
                    report.errors.append(f"{where}: {kind} '{t['name']}' has no data_type")
                if not t["dims"]:
                    report.errors.append(f"{where}: {kind} '{t['name']}' has no dims")
                if any(d == 0 or d < -1 for d in t["dims"]):
                    report.errors.append(f"{where}: {kind} '{t['name']}' has invalid dims {t['dims']}")
        versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
        if not versions:
            report.errors.append(f"{model_dir}: no numeric version folder (e.g. {model_dir}/1)")
        if backend == "ensemble":
            report.errors += _check_ensemble(name, cfg, configs, where)
        else:
            report.errors += _check_runtime_parameters(cfg, where)
            needed = cfg.get("default_model_filename") or MODEL_FILES.get(backend or "", "")
            for v in versions:
                vdir = model_dir / str(v)
                if needed and not (vdir / needed).is_file():
                    report.warnings.append(f"{vdir}: no {needed} (publish one with `mouaadnet publish`)")
                onnx_name = cfg["parameters"].get("onnx_file") or ("model.onnx" if needed == "model.onnx" else None)
                if onnx_name and (vdir / onnx_name).is_file():
                    report.errors += check_onnx_against_config(vdir / onnx_name, cfg, where)
                elif onnx_name and needed != onnx_name:
                    report.warnings.append(f"{vdir}: no {onnx_name} (publish one with `mouaadnet publish`)")
        variants = model_dir / "configs"
        if variants.is_dir():
            for variant in sorted(variants.glob("*.pbtxt")):
                try:
                    vcfg = load_config(variant, use_protobuf)
                except (ConfigParseError, ValueError, TypeError) as error:
                    report.errors.append(f"{variant}: cannot parse: {error}")
                    continue
                if vcfg.get("name", name) != name:
                    report.errors.append(f"{variant}: name '{vcfg.get('name')}' does not match folder '{name}'")
                if _signature(vcfg) != _signature(cfg):
                    report.errors.append(f"{variant}: max_batch_size/inputs/outputs differ from {where}")
    return report
