"""Where the time goes on a CPU: a per-layer profile of an exported graph in ONNX Runtime and OpenVINO.

- ``ort_profile``: ONNX Runtime's own profiler (``SessionOptions.enable_profiling``; the JSON trace's per-node
  ``kernel_time`` events) over ``runs`` inferences, averaged per node of the optimized graph (fused nodes such as
  Conv+Clip appear once, under ORT's fused op name).
- ``openvino_profile``: OpenVINO's per-layer performance counters (``PERF_COUNT``) of the compiled model, averaged
  over ``runs`` inferences; each row has the executed layer type and the kernel (e.g. ``brgconv_avx512_amx``,
  ``jit_avx512_dw``), which says which convs ran on AMX.
- ``layer_costs``: FLOPs (2 per multiply-add), bytes moved (input + output activations + weights, at 4 bytes per
  value) and arithmetic intensity (FLOPs / byte) of every node of the FP32 ONNX graph, from shape inference.
- ``summarize``: time by op type, by network block (stem, stages, neck, heads, attention pooling, decode), and the
  layer table with achieved GFLOP/s and a class: **compute-bound** when the layer's intensity is above the
  machine's ridge point (``ridge``: the best achieved conv GFLOP/s in this profile / a measured copy bandwidth),
  **memory-bound** otherwise (depthwise convs, concat/split, resize, element-wise and pooling ops have 0.1-3
  FLOPs per byte).

``mouaadnet profile`` (CLI) writes both profiles as Markdown tables and JSON; docs/PERFORMANCE.md is built from them.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

BLOCKS = (("/model/backbone/stage1/stage1.0/", "stem"), ("/model/backbone/stage1/", "stage1 (s2)"),
          ("/model/backbone/stage2/", "stage2 (s4)"), ("/model/backbone/stage3/", "stage3 (s8)"),
          ("/model/backbone/stage4/", "stage4 (s16)"), ("/model/backbone/stage5/", "stage5 (s32)"),
          ("/model/neck/", "neck (Slim-PAN)"), ("/model/detection/", "detection head"),
          ("/model/attributes/", "attribute head (attention pooling)"))


LAYOUT_OPS = ("Reorder", "ReorderInput", "ReorderOutput", "Transpose")
LAYOUT_BLOCK = "layout reorders (inserted by the runtime)"


def block_of(name: str) -> str:
    """The network block a node belongs to, from its scope (the exporter names nodes after module paths)."""
    for prefix, block in BLOCKS:
        if name.startswith(prefix):
            return block
    return "decode (top-K, gather, exp, softmax)" if not name.startswith("/model/") else "other"


# ------------------------------------------------------------------------------------------------ ONNX Runtime


def ort_profile(onnx_path: str | Path, size: int, runs: int = 100, warmup: int = 10, threads: int = 1,
                batch: int = 1) -> list[dict]:
    """Mean time (µs) per node of ONNX Runtime's optimized graph: [{"name", "op", "us", "block"}], slowest first."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
        warm = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        for _ in range(warmup):
            warm.run(None, {"images": x})
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            sess.run(None, {"images": x})
        trace = json.loads(Path(sess.end_profiling()).read_text())
    times: dict[str, list[float]] = defaultdict(list)
    args: dict[str, dict] = {}
    for event in sorted(trace, key=lambda e: e.get("ts", 0)):
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        name = event["name"][: -len("_kernel_time")]
        times[name].append(float(event["dur"]))
        args[name] = event.get("args", {})
    rows = []
    for name, values in times.items():
        us = float(np.mean(values[1:] if len(values) > 1 else values))  # the first run allocates the arena
        rows.append({"name": name, "op": args[name].get("op_name", "?"), "us": us, "block": block_of(name),
                     **_ort_event_cost(args[name])})
    return sorted(rows, key=lambda r: -r["us"])


def _ort_event_cost(args: dict) -> dict:
    """FLOPs / bytes / kind of a profiled ORT node from its event's shapes (convs; bytes for every node)."""
    def shapes(key: str) -> list[list[int]]:
        return [next(iter(item.values())) for item in args.get(key, [])]

    ins, outs = shapes("input_type_shape"), shapes("output_type_shape")
    nbytes = sum(int(args.get(k, 0) or 0) for k in ("activation_size", "output_size", "parameter_size"))
    cost = {"bytes": nbytes}
    op = args.get("op_name", "")
    if op in ("Conv", "FusedConv", "QLinearConv") and outs:
        weight = ins[3] if op == "QLinearConv" and len(ins) > 3 else (ins[1] if len(ins) > 1 else None)
        if weight and len(weight) == 4:
            out_numel = int(np.prod(outs[0]))
            cost["flops"] = 2 * out_numel * int(np.prod(weight[1:]))
            k = weight[2] * weight[3]
            cost["kind"] = ("depthwise" if weight[1] == 1 and k > 1 else
                            "pointwise 1x1" if k == 1 else f"dense {weight[2]}x{weight[3]}")
    return cost


# ------------------------------------------------------------------------------------------------ OpenVINO


def openvino_profile(path: str | Path, size: int, precision: str | None = None, runs: int = 100, warmup: int = 10,
                     threads: int = 1, batch: int = 1) -> list[dict]:
    """Mean real time (µs) per executed layer of OpenVINO's compiled model:
    [{"name", "op", "exec", "us", "block"}], slowest first (layers OpenVINO did not execute are left out)."""
    from mouaadnet.runtime.session import _ov_core, _read_openvino

    model, dynamic_only = _read_openvino(Path(path))
    if not dynamic_only:
        model.reshape({0: [batch, 3, size, size]})
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    request = _ov_core().compile_model(model, "CPU", config).create_infer_request()
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    for _ in range(warmup):
        request.infer({0: x})
    total: dict[str, float] = defaultdict(float)
    info: dict[str, tuple[str, str]] = {}
    for _ in range(runs):
        request.infer({0: x})
        for p in request.profiling_info:
            if str(p.status).endswith("EXECUTED") and not str(p.status).endswith("NOT_RUN"):
                total[p.node_name] += p.real_time.total_seconds() * 1e6
                info[p.node_name] = (p.node_type, p.exec_type)
    rows = [{"name": n, "op": info[n][0], "exec": info[n][1], "us": total[n] / runs, "block": block_of(n)}
            for n in total]
    return sorted(rows, key=lambda r: -r["us"])


# ------------------------------------------------------------------------------------------------ costs


def layer_costs(onnx_path: str | Path, batch: int = 1) -> dict[str, dict]:
    """FLOPs, bytes and kind per node of an FP32 ONNX graph (batch ``batch``), by node name."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_path))
    if not _conv_shapes_known(proto):  # e.g. an unsimplified graph (the peer's): onnxslim resolves its shapes
        import onnxslim

        proto = onnxslim.slim(proto)
    proto = onnx.shape_inference.infer_shapes(proto)
    shapes: dict[str, list[int]] = {}
    for v in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]:
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in v.type.tensor_type.shape.dim]
        shapes[v.name] = dims
    inits = {i.name: numpy_helper.to_array(i).shape for i in proto.graph.initializer}

    def numel(name: str) -> int:
        shape = shapes.get(name) or list(inits.get(name, ()))
        return int(np.prod(shape)) if shape else 0

    costs = {}
    for node in proto.graph.node:
        out = numel(node.output[0]) if node.output else 0
        ins = sum(numel(i) for i in node.input if i and i not in inits)
        weights = sum(int(np.prod(inits[i])) for i in node.input if i in inits)
        flops, kind = 0, node.op_type.lower()
        if node.op_type == "Conv" and node.input[1] in inits:
            w = inits[node.input[1]]
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            flops = 2 * out * int(np.prod(w[1:]))
            k = w[2] * w[3]
            kind = ("depthwise" if group > 1 and group == w[0] else "grouped") if group > 1 else \
                ("pointwise 1x1" if k == 1 else f"dense {w[2]}x{w[3]}")
        elif node.op_type in ("Add", "Mul", "Sub", "Div", "Sigmoid", "Clip", "Relu", "Exp"):
            flops = out
        elif node.op_type in ("MaxPool", "AveragePool"):
            kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), [1, 1])
            flops = out * int(np.prod(kernel))
        elif node.op_type in ("GlobalAveragePool", "ReduceMean", "ReduceSum", "Softmax"):
            flops = ins
        nbytes = 4 * (ins + out + weights)
        costs[node.name] = {"op": node.op_type, "kind": kind, "flops": flops, "bytes": nbytes,
                            "intensity": flops / nbytes if nbytes else 0.0, "block": block_of(node.name)}
    return costs


def _conv_shapes_known(proto) -> bool:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    known = {v.name for v in [*inferred.graph.value_info, *inferred.graph.output]
             if all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim[1:])}
    return all(n.output[0] in known for n in proto.graph.node if n.op_type == "Conv")


def copy_bandwidth_gbs(mbytes: float = 2.0, repeats: int = 200) -> float:
    """Practical single-thread memory bandwidth (GB/s, read + write) of a numpy copy of an array of ``mbytes``
    (2 MB: the size of this network's largest activation maps, L2-resident on this CPU)."""
    a = np.random.default_rng(0).random(int(mbytes * 1e6 / 8))
    b = np.empty_like(a)
    np.copyto(b, a)
    start = time.perf_counter()
    for _ in range(repeats):
        np.copyto(b, a)
    return 2 * a.nbytes * repeats / (time.perf_counter() - start) / 1e9


def _match_cost(name: str, costs: dict[str, dict]) -> dict | None:
    """The ONNX node behind a profiled layer: OpenVINO keeps ONNX names (+ '/WithoutBiases'), ORT's QDQ fusions
    keep the conv's name (+ '_token_N')."""
    if name in costs:
        return costs[name]
    base = re.sub(r"_token_\d+$", "", name.split("/WithoutBiases")[0])
    return costs.get(base)


def summarize(rows: list[dict], costs: dict[str, dict], bandwidth_gbs: float) -> dict:
    """By op type, by block, and per layer (with FLOPs, intensity, achieved GFLOP/s and bound class)."""
    total = sum(r["us"] for r in rows) or 1.0
    rows = [{**r, "block": LAYOUT_BLOCK} if r["op"] in LAYOUT_OPS else r for r in rows]
    by_op: dict[str, float] = defaultdict(float)
    by_block: dict[str, float] = defaultdict(float)
    for r in rows:
        by_op[r["op"]] += r["us"]
        by_block[r["block"]] += r["us"]
    layers = []
    for r in rows:
        # a layout reorder named after the conv it feeds is not that conv
        cost = {} if r["op"] in LAYOUT_OPS else dict(_match_cost(r["name"], costs) or {})
        if "flops" in r:  # ORT FP32: from the profiled node's own shapes (its fused nodes are renamed)
            cost.update(flops=r["flops"], kind=r.get("kind", r["op"].lower()))
        if r.get("bytes"):
            cost["bytes"] = r["bytes"]
        flops, nbytes = cost.get("flops", 0), cost.get("bytes", 0)
        layers.append({**r, "kind": cost.get("kind", r["op"].lower()), "flops": flops,
                       "intensity": flops / nbytes if nbytes else 0.0,
                       "gflops": flops / (r["us"] * 1e3) if r["us"] > 0 and flops else 0.0,
                       "gbs": nbytes / (r["us"] * 1e3) if r["us"] > 0 else 0.0})
    peak = max((lay["gflops"] for lay in layers if lay["flops"]), default=0.0)
    ridge = peak / bandwidth_gbs if bandwidth_gbs else 0.0
    for lay in layers:
        lay["bound"] = "compute" if lay["flops"] and lay["intensity"] >= ridge else "memory"
    return {"total_us": total, "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
            "by_block": dict(sorted(by_block.items(), key=lambda kv: -kv[1])), "layers": layers,
            "peak_gflops": peak, "bandwidth_gbs": bandwidth_gbs, "ridge_flops_per_byte": ridge}


def markdown(title: str, summary: dict, top: int = 25) -> str:
    total = summary["total_us"]
    lines = [f"#### {title}", "",
             f"Sum of per-layer times {total / 1e3:.2f} ms; best achieved conv {summary['peak_gflops']:.1f} GFLOP/s, "
             f"copy bandwidth {summary['bandwidth_gbs']:.1f} GB/s -> ridge {summary['ridge_flops_per_byte']:.1f} "
             "FLOP/byte.", "", "| op type | ms | share |", "|---|---:|---:|"]
    lines += [f"| {op} | {us / 1e3:.3f} | {us / total:.1%} |" for op, us in summary["by_op"].items() if us / total >= 0.005]
    lines += ["", "| block | ms | share |", "|---|---:|---:|"]
    lines += [f"| {block} | {us / 1e3:.3f} | {us / total:.1%} |" for block, us in summary["by_block"].items()]
    lines += ["", f"Slowest {top} layers:", "",
              "| layer | op / kernel | kind | µs | MFLOP | FLOP/B | GFLOP/s | bound |", "|---|---|---|---:|---:|---:|---:|---|"]
    for lay in summary["layers"][:top]:
        kernel = f"{lay['op']} / {lay['exec']}" if lay.get("exec") else lay["op"]
        lines.append(f"| `{lay['name']}` | {kernel} | {lay['kind']} | {lay['us']:.0f} | {lay['flops'] / 1e6:.1f} | "
                     f"{lay['intensity']:.1f} | {lay['gflops']:.1f} | {lay['bound']} |")
    return "\n".join(lines)


def run_profile(fp32_onnx: str | Path, size: int, runs: int = 100, threads: int = 1,
                int8_onnx: str | Path | None = None, ov_int8: str | Path | None = None) -> dict:
    """Both runtimes' profiles of the FP32 graph (OpenVINO at f32 and at bf16), and of the INT8 graphs when given
    (``int8_onnx``: ORT's QDQ graph in ORT; ``ov_int8``: NNCF IR in OpenVINO, bf16 for its float parts)."""
    costs = layer_costs(fp32_onnx)
    bandwidth = copy_bandwidth_gbs()
    out = {"size": size, "runs": runs, "threads": threads,
           "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None, "profiles": {}}
    jobs = [("ort fp32", lambda: ort_profile(fp32_onnx, size, runs, threads=threads)),
            ("openvino f32", lambda: openvino_profile(fp32_onnx, size, "f32", runs, threads=threads)),
            ("openvino bf16", lambda: openvino_profile(fp32_onnx, size, "bf16", runs, threads=threads))]
    if int8_onnx:
        jobs.append(("ort int8", lambda: ort_profile(int8_onnx, size, runs, threads=threads)))
    if ov_int8:
        jobs.append(("openvino int8", lambda: openvino_profile(ov_int8, size, "bf16", runs, threads=threads)))
    for name, job in jobs:
        out["profiles"][name] = summarize(job(), costs, bandwidth)
    return out
