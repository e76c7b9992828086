"""Triton Python model that does no work: zeros of the configured output shapes, for `bench-serve`'s floor rows.

`mouaadnet bench-serve` installs it as model `floor` with the detector's config (same inputs, outputs, batching
and instances), so the latency of a request to it is what Triton and the Python backend cost by themselves,
without ONNX Runtime: the lowest per-request overhead any Python-backend model step can have on this server.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

DTYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.outputs = [(o["name"], [int(d) for d in o["dims"]], DTYPES[o["data_type"]]) for o in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            batch = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().shape[0]
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, np.zeros([batch, *dims], dtype)) for name, dims, dtype in self.outputs]))
        return responses
