"""TensorRT engine build from the exported ONNX graph (TensorRT 10 Python API), imported lazily.

FP16: the FP32 graph with the FP16 builder flag. INT8: the QDQ graph (explicit quantization); the scales come
from its Q/DQ nodes, so there is no calibrator. One optimization profile covers batch 1..max_batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

INSTALL_HINT = ("TensorRT is not installed (it needs an NVIDIA GPU): pip install tensorrt "
                "--extra-index-url https://pypi.nvidia.com, or run inside an NGC TensorRT container "
                "(nvcr.io/nvidia/tensorrt)")


class TensorRTUnavailable(RuntimeError):
    """The ``tensorrt`` package cannot be imported; the message says how to get it."""


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as error:  # also OSError-free: a broken install surfaces as ImportError
        raise TensorRTUnavailable(f"{INSTALL_HINT} ({error})") from None
    return tensorrt


def _has_qdq(onnx_path: Path) -> bool:
    import onnx

    return any(n.op_type == "QuantizeLinear" for n in onnx.load(str(onnx_path), load_external_data=False).graph.node)


def compile_trt(onnx_path: str | Path, out: str | Path, precision: Literal["fp16", "int8"] = "fp16",
                max_batch: int = 16, opt_batch: int | None = None, timing_cache: str | Path | None = None,
                workspace_mib: int = 1024) -> Path:
    """Build a serialized TensorRT engine (``out``, usually .plan) from ``onnx_path``.

    Raises ``TensorRTUnavailable`` without TensorRT, ValueError for an INT8 request on a graph without Q/DQ
    nodes, RuntimeError when parsing or building fails. ``timing_cache`` is read if present and written back.
    """
    onnx_path, out = Path(onnx_path), Path(out)
    if precision not in ("fp16", "int8"):
        raise ValueError(f"precision must be fp16 or int8, got {precision!r}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    trt = import_tensorrt()
    if precision == "int8" and not _has_qdq(onnx_path):
        raise ValueError(f"{onnx_path}: INT8 needs a QDQ graph (export with --int8 calib|qat); no calibrator is used")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        _, *rest = tuple(tensor.shape)
        opt = min(opt_batch or max_batch, max_batch)
        profile.set_shape(tensor.name, (1, *rest), (opt, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(engine))
    if cache_path:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return out


def engine_io(plan: str | Path) -> dict:
    """Deserialize an engine and list its I/O tensors (name, mode, dtype, shape); proves the plan loads."""
    trt = import_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(plan).read_bytes())
    if engine is None:
        raise RuntimeError(f"{plan}: not a TensorRT engine for this TensorRT version / GPU")
    io = {"inputs": [], "outputs": []}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        kind = "inputs" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "outputs"
        io[kind].append({"name": name, "dtype": str(engine.get_tensor_dtype(name)), "shape": list(engine.get_tensor_shape(name))})
    return io
