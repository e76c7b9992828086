"""One interface for running an exported model file on the CPU: ONNX Runtime or OpenVINO, precision stated.

``open_model(path, runtime, precision, threads)`` returns a ``RuntimeModel``: call it with float32 images
[N,3,S,S] (the documented model input) and it returns the graph's outputs by name (scene: ``boxes``,
``scores``, ``gender``, ``age``; crop: ``gender``, ``age``), the same dict from either runtime.

- ``runtime="onnxruntime"``: an ``.onnx`` file (FP32, or INT8 QDQ) in ONNX Runtime's CPU provider. The
  precision is the graph's ("fp32" or "int8"); asking for another is an error.
- ``runtime="openvino"``: an ``.onnx`` file or an OpenVINO IR (``.xml`` + ``.bin``, ``mouaadnet export --format
  openvino``) on OpenVINO's CPU plugin. ``precision`` is OpenVINO's inference precision for the float parts of
  the graph: "f32", or "bf16" (bfloat16 matmul/conv on AMX / AVX512-BF16 CPUs), or None for the plugin's
  default, which is **bf16 on CPUs with AMX** (this machine) and f32 elsewhere: the default is resolved and stated
  in ``RuntimeModel.precision``/``describe()``, never silent. bf16 changes the numbers: gate it like INT8
  (``mouaadnet gates --openvino``). An INT8 graph (NNCF FakeQuantize, or ORT's QDQ) runs its quantized convs
  in INT8 whatever the hint; the hint applies to what stays float.
- ``runtime="auto"``: the choice recorded next to the model by ``mouaadnet gates --choose``
  (``mouaadnet.runtime.choice``); ONNX Runtime when there is none.

OpenVINO compiles one static-shape model per batch size seen (a handful, cached; 10-20 % faster than a
dynamic batch on this CPU) and a dynamic-batch one for the rest. ONNX QDQ graphs exported before
``model.onnx_passes`` existed are rewritten in memory first (exact; they crash OpenVINO 2026.4 otherwise).

Only numpy and the runtime packages are imported (no torch): the Triton Python backend, which runs in the
serving venv, uses this module too. The exceptions: onnx, to read an ONNX graph's precision for ORT (on first use of
``precision``/``quantized``), and ``model.onnx_passes`` (which imports torch through ``model``) only for an older
INT8 graph OpenVINO flags; without them such a graph stays on a dynamic batch. ``runtime_factory`` is the hook for
apps (the Gradio demo).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

RUNTIMES = ("onnxruntime", "openvino")
OPENVINO_PRECISIONS = ("f32", "bf16")
INPUT_NAME = "images"
SCENE_OUTPUT_NAMES = ("boxes", "scores", "gender", "age")  # the exported graph's contract (model/onnx_run.py)
DEFAULT_SIZES = {"scene": 320, "crop": 112}
MAX_STATIC_BATCHES = 4


class RuntimeLoadError(RuntimeError):
    """A model the runtime cannot open or run, or a runtime that is not installed; the message says which."""


def default_threads() -> int:
    """MOUAADNET_THREADS (or MOUAADNET_ORT_THREADS), else min(2, cores): this project runs on small shared CPUs."""
    env = os.environ.get("MOUAADNET_THREADS") or os.environ.get("MOUAADNET_ORT_THREADS") or "0"
    return int(env) or min(2, os.cpu_count() or 1)


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def openvino_default_precision() -> str:
    """The inference precision OpenVINO's CPU plugin uses when none is asked for, on this CPU ("bf16" with AMX)."""
    return _type_name(_ov_core().get_property("CPU", "INFERENCE_PRECISION_HINT"))


def _type_name(value) -> str:
    """ov.Type -> 'bf16' / 'f32' (its get_type_name), strings unchanged."""
    name = getattr(value, "get_type_name", None)
    return name() if callable(name) else str(value)


_CORE = None


def _ov_core():
    global _CORE
    if _CORE is None:
        try:
            import openvino as ov
        except ImportError as error:
            raise RuntimeLoadError(f"openvino is not installed ({error}); pip install 'mouaadnet-ultra[openvino]'") \
                from None
        _CORE = ov.Core()
    return _CORE


class RuntimeModel:
    """A loaded model: ``model(images) -> {output name: array}``; ``runtime``, ``precision``, ``quantized``,
    ``mode`` ("scene"/"crop"), ``size`` (square input side; ``static_size``: fixed by the file), ``output_names``,
    ``path``."""

    runtime: str
    precision: str
    precision_source: str = "graph"
    quantized: bool = False
    threads: int = 1

    def __init__(self, path: Path, output_names: list[str], size: int | None):
        self.path = Path(path)
        self.output_names = list(output_names)
        self.mode = "scene" if "boxes" in self.output_names else "crop"
        self.static_size = size is not None  # the file fixes H = W (else DEFAULT_SIZES is only a suggestion)
        self.size = size or DEFAULT_SIZES[self.mode]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        graph = "INT8 graph" if self.quantized else "FP32 graph"
        return (f"{self.path.name}: {self.runtime}, {graph}, inference precision {self.precision} "
                f"({self.precision_source}), {self.threads} thread(s)")


def ort_session(path: str | Path, threads: int | None = None):
    """The ONNX Runtime CPU session every part of mouaadnet/ runs (bounded threads, no spinning); ``model/`` keeps
    its own for its export checks, since it imports nothing of mouaadnet."""
    import onnxruntime as ort

    threads = threads or default_threads()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # No busy-waiting between ops: on small shared CPUs spinning threads steal what other processes need.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _onnx_is_quantized(path: Path) -> bool | None:
    """QuantizeLinear/DequantizeLinear in the graph; None when onnx is not installed."""
    try:
        import onnx
    except ImportError:
        return None
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv")
               for n in onnx.load(str(path), load_external_data=False).graph.node)


class OrtRuntimeModel(RuntimeModel):
    runtime = "onnxruntime"

    def __init__(self, path: str | Path, precision: str | None = None, threads: int | None = None):
        path = Path(path)
        if path.suffix != ".onnx":
            raise RuntimeLoadError(f"{path}: ONNX Runtime runs .onnx files (an OpenVINO IR needs --runtime openvino)")
        self.threads = threads or default_threads()
        try:
            self.session = ort_session(path, self.threads)
        except Exception as error:  # noqa: BLE001 - ORT's own message says what is wrong
            raise RuntimeLoadError(f"{path}: cannot load with ONNX Runtime: {error}") from None
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != [INPUT_NAME]:
            raise RuntimeLoadError(f"{path}: expected one input {INPUT_NAME!r}, got {[i.name for i in inputs]}")
        shape = inputs[0].shape
        super().__init__(path, [o.name for o in self.session.get_outputs()],
                         shape[3] if isinstance(shape[3], int) else None)
        self._quantized: bool | None = None
        if precision is not None and precision not in (self.precision, "f32" if self.precision == "fp32" else None):
            raise RuntimeLoadError(f"{path}: ONNX Runtime runs this graph in {self.precision}; precision {precision!r} "
                                   f"needs --runtime openvino (or another exported file)")

    @property
    def quantized(self) -> bool:  # read from the file on first use: importing onnx costs ~RSS a deployment needn't pay
        if self._quantized is None:
            self._quantized = bool(_onnx_is_quantized(self.path))
        return self._quantized

    @property
    def precision(self) -> str:
        return "int8" if self.quantized else "fp32"

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, {INPUT_NAME: np.ascontiguousarray(images, np.float32)})
        return dict(zip(self.output_names, values))


def _ov_is_quantized(model) -> bool:
    ops = model.get_ordered_ops()
    return any(op.get_type_name() in ("FakeQuantize", "FakeConvert") for op in ops) or any(
        op.get_type_name() == "Convert" and op.get_input_element_type(0).get_type_name() in ("u8", "i8") for op in ops)


def is_quantized(path: str | Path) -> bool:
    """Whether a model file is an INT8 graph: QDQ ONNX, or an IR with FakeQuantize / INT8 weights (no compile)."""
    path = Path(path)
    if path.suffix == ".xml":
        return _ov_is_quantized(_ov_core().read_model(str(path)))
    quantized = _onnx_is_quantized(path)
    return bool(quantized) if quantized is not None else _ov_is_quantized(_ov_core().read_model(str(path)))


def _read_openvino(path: Path):
    """(ov.Model, dynamic batch only) of an IR (.xml) or an ONNX file. An ONNX INT8 graph that OpenVINO's own
    check flags (a no-op Slice in a quantized graph) is rewritten in memory (``model.onnx_passes``, exact); where
    that module cannot be imported (no onnx or no torch: the serving venv) it is kept on a dynamic batch, where
    OpenVINO 2026.4 does not crash. onnx is imported only for such a graph (it costs RSS)."""
    core = _ov_core()
    model = core.read_model(str(path))
    if path.suffix == ".xml" or not _ov_noop_slice_in_quantized(model):
        return model, False
    try:
        import onnx

        from model.onnx_passes import has_crash_pattern, make_openvino_safe
    except ImportError:
        return model, True
    proto = onnx.load(str(path))
    if not has_crash_pattern(proto):
        return model, False
    make_openvino_safe(proto)
    return core.read_model(proto.SerializeToString(), b""), False


def _ov_noop_slice_in_quantized(model) -> bool:
    """An OpenVINO-side check for the crash pattern's core: a quantized graph with a Slice whose output shape
    equals its input shape (a no-op slice). Conservative: such a graph is only ever compiled with a dynamic
    batch, where OpenVINO 2026.4 does not crash (``model/onnx_passes.py``)."""
    if not _ov_is_quantized(model):
        return False
    return any(op.get_type_name() in ("Slice", "StridedSlice")
               and op.get_input_partial_shape(0) == op.get_output_partial_shape(0) for op in model.get_ordered_ops())


class OpenVinoRuntimeModel(RuntimeModel):
    runtime = "openvino"

    def __init__(self, path: str | Path, precision: str | None = None, threads: int | None = None,
                 static_batches: bool = True):
        path = Path(path)
        if path.suffix not in (".onnx", ".xml"):
            raise RuntimeLoadError(f"{path}: OpenVINO runs .onnx or IR .xml files")
        if not path.is_file():
            raise RuntimeLoadError(f"{path}: no such file")
        if precision is not None and precision not in OPENVINO_PRECISIONS:
            raise RuntimeLoadError(f"OpenVINO inference precision must be one of {OPENVINO_PRECISIONS} or the default, "
                                f"got {precision!r}")
        self.threads = threads or default_threads()
        try:
            self.model, dynamic_only = _read_openvino(path)
        except RuntimeLoadError:
            raise
        except Exception as error:  # noqa: BLE001 - OpenVINO's message says what is wrong
            raise RuntimeLoadError(f"{path}: cannot read with OpenVINO: {error}") from None
        if [p.get_any_name() for p in self.model.inputs] != [INPUT_NAME]:
            raise RuntimeLoadError(f"{path}: expected one input {INPUT_NAME!r}, got "
                                f"{[p.get_any_name() for p in self.model.inputs]}")
        pshape = self.model.input(0).get_partial_shape()
        size = pshape[3].get_length() if pshape.rank.is_static and pshape[3].is_static else None
        super().__init__(path, [o.get_any_name() for o in self.model.outputs], size)
        self.quantized = _ov_is_quantized(self.model)
        self.static_batches = static_batches and not dynamic_only
        self.config = {"INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        if precision is not None:
            self.config["INFERENCE_PRECISION_HINT"] = precision
        self._requests: dict[int | None, object] = {}
        request = self._compile(None)  # the dynamic-batch model: fails here, not at the first call
        self.precision = _type_name(request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT"))
        self.precision_source = "asked" if precision is not None else "OpenVINO's default on this CPU"

    def _compile(self, batch: int | None):
        model = self.model
        if batch is not None:
            model = self.model.clone()
            size = self.model.input(0).get_partial_shape()
            model.reshape({0: [batch, *(size[i].get_length() if size[i].is_static else self.size for i in (1, 2, 3))]})
        try:
            compiled = _ov_core().compile_model(model, "CPU", self.config)
        except Exception as error:  # noqa: BLE001
            raise RuntimeLoadError(f"{self.path}: OpenVINO cannot compile it: {error}") from None
        request = compiled.create_infer_request()
        self._requests[batch] = request
        return request

    def _request(self, batch: int):
        if batch in self._requests:
            return self._requests[batch]
        if self.static_batches and len(self._requests) <= MAX_STATIC_BATCHES:
            return self._compile(batch)
        return self._requests[None]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(images, np.float32)
        request = self._request(int(x.shape[0]))
        result = request.infer({0: x})
        return {name: np.array(result[i], copy=True) for i, name in enumerate(self.output_names)}


def output_agreement(reference: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, float]:
    """Max abs differences between two runs' outputs: ``scores`` sorted per image (near-ties may swap inside
    TopK), ``top1_score``, and crop-mode ``gender``/``age`` (per-detection attributes follow the detection order,
    so scene mode compares scores only; accuracy is gated on the validation sets)."""
    report = {}
    for name, a in reference.items():
        b = got[name]
        if name == "scores":
            report[name] = float(np.abs(np.sort(a, -1) - np.sort(b, -1)).max())
            report["top1_score"] = float(np.abs(a[:, 0] - b[:, 0]).max())
        elif a.ndim == 1:
            report[name] = float(np.abs(a - b).max())
    return report


def open_model(path: str | Path, runtime: str = "onnxruntime", precision: str | None = None,
               threads: int | None = None) -> RuntimeModel:
    """Load ``path`` in ``runtime`` ("onnxruntime" | "openvino" | "auto"); see the module docstring."""
    path = Path(path)
    if runtime == "auto":
        from .choice import resolve

        choice = resolve(path)
        if choice is None:
            return OrtRuntimeModel(path, precision, threads)
        try:
            return open_model(choice.path, choice.runtime, choice.precision or precision, threads)
        except RuntimeLoadError as error:  # e.g. the choice names OpenVINO and this install has no openvino
            warnings.warn(f"runtime auto: the recorded choice ({choice.runtime} on {choice.path.name}) cannot run "
                          f"here ({error}); using onnxruntime on {path.name}", RuntimeWarning, stacklevel=2)
            return OrtRuntimeModel(path, precision, threads)
    if not path.is_file():
        raise RuntimeLoadError(f"{path}: no such file")
    if runtime == "onnxruntime":
        return OrtRuntimeModel(path, precision, threads)
    if runtime == "openvino":
        return OpenVinoRuntimeModel(path, precision, threads)
    raise RuntimeLoadError(f"runtime must be one of {RUNTIMES} or 'auto', got {runtime!r}")


def runtime_factory(runtime: str = "onnxruntime", precision: str | None = None,
                    threads: int | None = None) -> Callable[[str | Path], RuntimeModel]:
    """A loader with the runtime chosen once (an app's setting): ``factory(path) -> RuntimeModel``."""
    if runtime not in (*RUNTIMES, "auto"):
        raise RuntimeLoadError(f"runtime must be one of {RUNTIMES} or 'auto', got {runtime!r}")

    def load(path: str | Path) -> RuntimeModel:
        return open_model(path, runtime, precision, threads)

    return load
