"""Small exact rewrites of ONNX graphs (plain onnx + numpy): no-op Slices out, re-quantization folded.

Why they exist: OpenVINO 2026.4's CPU plugin segfaults compiling our ORT INT8 QDQ graph with a static batch
(``Core.read_model`` of the .onnx, then a static shape: what ``benchmark_app`` and any fixed-batch deployment
do). The pattern, bisected to a 7-node graph (``tests/test_onnx_passes.py``) and traced to
``ov::pass::low_precision::MoveFakeQuantize`` -> ``NetworkHelper::moveDequantizationBefore`` (a null node):

    Concat -> QuantizeLinear/DequantizeLinear (zero point != 0) -> Slice that keeps every channel
           -> QuantizeLinear/DequantizeLinear with the same scale and zero point

Our ``GhostModule`` returns ``torch.cat([y, cheap(y)])[:, :c_out]``; with an even ``c_out`` the slice keeps all
channels, the TorchScript exporter still writes it, and ORT's quantizer puts the Concat's Q/DQ on both sides of
it (the Slice shares its input's quantization parameters). Symmetric (s8, zero point 0) activations, a Slice that
drops a channel, a dynamic batch or no second Q/DQ each avoid the crash. Both rewrites here are exact (ONNX
Runtime's outputs are bit-identical before and after, checked in the tests) and remove the pattern:

- ``drop_noop_slices``: a Slice whose sliced axes are static and fully kept (start 0, end >= dim, step 1) is its
  input; ``model.export.export_onnx`` runs it on every FP32 graph, so INT8 graphs made from it never have the
  pattern;
- ``fold_requantize``: QuantizeLinear(DequantizeLinear(q)) with the same per-tensor scale and zero point is q
  ((q - z) * s / s rounds back to q - z exactly); with the no-op Slice gone it removes the second Q/DQ of
  INT8 graphs exported before this fix (``make_openvino_safe``).
"""

from __future__ import annotations

import numpy as np

INT64_MAX = np.iinfo(np.int64).max


def constant_values(proto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values of the main graph, by tensor name."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _static_shapes(proto) -> dict[str, list[int | None]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = value.type.tensor_type
        if t.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return shapes


def _rewire(proto, rename: dict[str, str]) -> None:
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            while name in rename:
                name = rename[name]
            node.input[i] = name


def shorten_tensor_names(proto) -> int:
    """Rename every tensor inside the graph (initializers, node inputs/outputs, value_info; not the graph's inputs
    and outputs) to a short id in order of first use; node names stay (profiles group time by them). Returns
    the bytes saved. Why: ONNX Runtime's quantizer names each Q/DQ tensor after its module path and role
    (``/model/backbone/stage2/.../Clip_output_0_QuantizeLinear_Output``): ~140 KB of a 1 MB INT8 file. A graph
    with subgraphs (If/Loop bodies read outer names) is left as it is."""
    import onnx

    graph = proto.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return 0
    before = proto.ByteSize()
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}  # "": an omitted optional input
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if name in keep:
            return name
        return short.setdefault(name, f"t{len(short)}")

    for init in graph.initializer:
        init.name = rename(init.name)
    for node in graph.node:
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]
    for info in graph.value_info:
        info.name = rename(info.name)
    return before - proto.ByteSize()


def prune(proto) -> None:
    """Remove nodes none of whose outputs is used, then initializers no node reads (repeats until stable)."""
    while True:
        used = {name for node in proto.graph.node for name in node.input} | {o.name for o in proto.graph.output}
        dead = [node for node in proto.graph.node if not any(out in used for out in node.output)]
        if not dead:
            break
        for node in dead:
            proto.graph.node.remove(node)
    used = {name for node in proto.graph.node for name in node.input} | {o.name for o in proto.graph.output}
    keep = [init for init in proto.graph.initializer if init.name in used]
    if len(keep) != len(proto.graph.initializer):
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(keep)


def _is_noop_slice(node, shape: list[int | None], consts: dict[str, np.ndarray]) -> bool:
    args = list(node.input) + [""] * (5 - len(node.input))
    if any(name and name not in consts for name in args[1:]):
        return False
    starts, ends = consts[args[1]].reshape(-1).tolist(), consts[args[2]].reshape(-1).tolist()
    axes = consts[args[3]].reshape(-1).tolist() if args[3] else list(range(len(starts)))
    steps = consts[args[4]].reshape(-1).tolist() if args[4] else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if not -len(shape) <= axis < len(shape):
            return False
        dim = shape[axis]
        if step != 1 or dim is None or not dim:
            return False
        if not (start == 0 or start <= -dim) or end < dim:
            return False
    return True


def drop_noop_slices(proto) -> list[str]:
    """Remove Slice nodes that keep every element (sliced axes static, start 0, end >= dim, step 1); their
    consumers read the Slice's input instead. Returns the names of the removed nodes (in place)."""
    shapes = _static_shapes(proto)
    consts = constant_values(proto)
    outputs = {o.name for o in proto.graph.output}
    rename, removed = {}, []
    for node in proto.graph.node:
        if node.op_type != "Slice" or node.output[0] in outputs or node.input[0] not in shapes:
            continue
        if _is_noop_slice(node, shapes[node.input[0]], consts):
            rename[node.output[0]] = node.input[0]
            removed.append(node)
    return _remove_and_rewire(proto, removed, rename)


def _remove_and_rewire(proto, removed: list, rename: dict[str, str]) -> list[str]:
    """Drop ``removed`` nodes, point their consumers at ``rename``'s inputs, prune what is left unused; returns
    the removed nodes' names (in place)."""
    for node in removed:
        proto.graph.node.remove(node)
    if removed:
        _rewire(proto, rename)
        prune(proto)
    return [node.name for node in removed]


def fold_requantize(proto) -> list[str]:
    """Replace QuantizeLinear(DequantizeLinear(q)) by q when both use the same per-tensor scale and zero point
    (exact); returns the names of the removed QuantizeLinear nodes (in place)."""
    consts = constant_values(proto)
    producer = {out: node for node in proto.graph.node for out in node.output}
    outputs = {o.name for o in proto.graph.output}

    def same(a: str, b: str) -> bool:
        if a == b:
            return True
        return (a in consts and b in consts and consts[a].dtype == consts[b].dtype
                and consts[a].shape == consts[b].shape and np.array_equal(consts[a], consts[b]))

    def per_tensor(node) -> bool:
        scale = consts.get(node.input[1])
        return scale is not None and scale.size == 1

    rename, removed = {}, []
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.output[0] in outputs:
            continue
        dq = producer.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            continue
        if per_tensor(node) and per_tensor(dq) and same(node.input[1], dq.input[1]) and same(node.input[2], dq.input[2]):
            rename[node.output[0]] = dq.input[0]
            removed.append(node)
    return _remove_and_rewire(proto, removed, rename)


def make_openvino_safe(proto) -> dict[str, list[str]]:
    """Both rewrites, in place: what an older INT8 graph needs to compile in OpenVINO with a static batch."""
    return {"noop_slices": drop_noop_slices(proto), "requantize": fold_requantize(proto)}


def has_crash_pattern(proto) -> bool:
    """True when the graph has a no-op Slice between a DequantizeLinear and a QuantizeLinear (the pattern
    that crashes OpenVINO 2026.4's CPU plugin with a static batch; see the module docstring)."""
    shapes = _static_shapes(proto)
    consts = constant_values(proto)
    producer = {out: node for node in proto.graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in proto.graph.node:
        if node.op_type != "Slice" or node.input[0] not in shapes:
            continue
        before = producer.get(node.input[0])
        after = consumers.get(node.output[0], [])
        if (before is not None and before.op_type == "DequantizeLinear"
                and any(c.op_type == "QuantizeLinear" for c in after)
                and _is_noop_slice(node, shapes[node.input[0]], consts)):
            return True
    return False
