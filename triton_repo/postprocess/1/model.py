"""Triton Python model `postprocess`: reads requests, calls mouaadnet.serving.prepost.postprocess, builds responses.

One response per request; an invalid threshold fails only its own request.
"""

import json

import triton_python_backend_utils as pb_utils

from mouaadnet.serving.prepost import check_threshold, postprocess

OUTPUTS = ("boxes", "scores", "gender", "age", "count")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.default_threshold = check_threshold(float(params.get("default_score_threshold", "0.3")))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                inputs = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                          for name in ("boxes", "scores", "gender", "age", "meta")}
                given = pb_utils.get_input_tensor_by_name(request, "score_threshold")
                threshold = self.default_threshold if given is None else given.as_numpy().reshape(-1)
                result = postprocess(inputs["boxes"], inputs["scores"], inputs["gender"], inputs["age"],
                                     inputs["meta"], threshold)
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, result[name]) for name in OUTPUTS]))
            except ValueError as error:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"postprocess: {error}", pb_utils.TritonError.INVALID_ARG)))
            except Exception as error:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"postprocess: {type(error).__name__}: {error}")))
        return responses
