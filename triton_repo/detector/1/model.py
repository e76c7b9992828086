"""Triton Python model `detector`: the network on this version's model.onnx, run by ONNX Runtime or OpenVINO (CPU).

The runtime is one config parameter (`runtime`: auto | onnxruntime | openvino, auto = the gated choice recorded
beside the model, else onnxruntime; `precision`: OpenVINO's inference
precision f32 | bf16 | default = OpenVINO's default on this CPU, bf16 with AMX), read through mouaadnet.runtime,
the interface `mouaadnet detect --model` uses too. Requests queued by dynamic batching are concatenated into one
run and split back: one response per request. `mouaadnet publish` copies this file into every new version folder next to the new model.onnx.
Triton cannot hide this model from clients (an ensemble's steps are ordinary models; its restricted-API
options work per API, not per model), so every request is checked here: a batch with NaN, Inf or values
outside [0, 1] fails alone with INVALID_ARG and never reaches the runtime.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from mouaadnet.runtime import open_model
from mouaadnet.runtime.session import INPUT_NAME
from mouaadnet.runtime.session import SCENE_OUTPUT_NAMES as OUTPUT_NAMES
from mouaadnet.serving.prepost import check_model_input


def verify_published(path):
    """Refuse to load a model file whose sha256 differs from the sidecar `mouaadnet publish` wrote next to it
    (bit rot, a hand edit, a partial copy): the version then fails to load, with this reason in the index."""
    import hashlib

    sidecar = path + ".json"
    if not os.path.isfile(sidecar):
        return
    expected = json.loads(open(sidecar).read()).get("sha256")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if expected and digest.hexdigest() != expected:
        raise RuntimeError(f"{path}: sha256 {digest.hexdigest()} does not match {expected} in {sidecar} "
                           "(corrupt or replaced after publishing); not loading it")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(version_dir, params.get("onnx_file", "model.onnx"))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: publish a model with `mouaadnet publish MODEL.onnx`")
        verify_published(path)
        self.runtime = params.get("runtime", "onnxruntime") or "onnxruntime"
        precision = params.get("precision") or "default"
        self.model = open_model(path, self.runtime, None if precision == "default" else precision,
                                threads=int(params.get("intra_op_threads", "2")))
        if sorted(self.model.output_names) != sorted(OUTPUT_NAMES):
            raise ValueError(f"{path}: outputs {self.model.output_names}, expected {OUTPUT_NAMES}")
        pb_utils.Logger.log_info(f"detector: {self.model.describe()}")

    def execute(self, requests):
        responses = [None] * len(requests)
        arrays, good = [], []
        for i, request in enumerate(requests):
            array = pb_utils.get_input_tensor_by_name(request, INPUT_NAME).as_numpy()
            try:
                check_model_input(array)
            except ValueError as error:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"detector: {error}", pb_utils.TritonError.INVALID_ARG))
                continue
            arrays.append(array)
            good.append(i)
        if not good:
            return responses
        try:
            outputs = self.model(np.concatenate(arrays) if len(arrays) > 1 else arrays[0])
        except Exception as error:
            err = pb_utils.TritonError(f"detector: {self.runtime} failed: {error}")
            for i in good:
                responses[i] = pb_utils.InferenceResponse(error=err)
            return responses
        start = 0
        for i, array in zip(good, arrays):
            stop = start + array.shape[0]
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, outputs[name][start:stop]) for name in OUTPUT_NAMES])
            start = stop
        return responses
