"""Triton Python model `detector`: the network run on the CPU by ONNX Runtime or OpenVINO on this version's model.

The runtime is one config parameter (`runtime`: onnxruntime | openvino; `precision`: OpenVINO's inference
precision f32 | bf16 | default = OpenVINO's default on this CPU, bf16 with AMX), read through mouaadnet.runtime,
the interface `mouaadnet detect --model` uses too. Requests queued by dynamic batching are concatenated into one
run and split back: one response per request. `mouaadnet publish` copies this file into every new version
folder next to the new model.onnx.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from mouaadnet.runtime import open_model
from mouaadnet.serving.onnx_model import INPUT_NAME, OUTPUT_NAMES


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(version_dir, params.get("onnx_file", "model.onnx"))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: publish a model with `mouaadnet publish MODEL.onnx`")
        self.runtime = params.get("runtime", "onnxruntime") or "onnxruntime"
        precision = params.get("precision") or "default"
        self.model = open_model(path, self.runtime, None if precision == "default" else precision,
                                threads=int(params.get("intra_op_threads", "2")))
        if sorted(self.model.output_names) != sorted(OUTPUT_NAMES):
            raise ValueError(f"{path}: outputs {self.model.output_names}, expected {OUTPUT_NAMES}")
        pb_utils.Logger.log_info(f"detector: {self.model.describe()}")

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, INPUT_NAME).as_numpy() for r in requests]
        try:
            outputs = self.model(np.concatenate(arrays) if len(arrays) > 1 else arrays[0])
        except Exception as error:
            err = pb_utils.TritonError(f"detector: {self.runtime} failed: {error}")
            return [pb_utils.InferenceResponse(error=err) for _ in requests]
        responses, start = [], 0
        for array in arrays:
            stop = start + array.shape[0]
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, outputs[name][start:stop]) for name in OUTPUT_NAMES]))
            start = stop
        return responses
