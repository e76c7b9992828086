"""Triton Python model `preprocess`: reads requests, calls mouaadnet.serving.prepost, builds responses.

One response per request; a bad image fails only its own request (the error names the problem). A request is
refused before any pixel is decoded when its images add up to more than the per-request decoding budget
(`max_request_pixels`, `max_request_bytes`), so no single request can hold an instance for long, and refused as
busy (UNAVAILABLE, "retry") when the pixels being decoded across all instances of this server would exceed
`max_pixels_in_flight` (mouaadnet.serving.admission: requests up to `always_admit_pixels` always pass).
"""

import json
import os

import triton_python_backend_utils as pb_utils

from mouaadnet.serving.admission import BusyError, DecodeBudget, budget_path
from mouaadnet.serving.prepost import ImageError, preprocess_batch


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.size = int(params.get("input_size", "320"))
        self.max_pixels = int(params.get("max_pixels", "50000000"))
        self.max_side = int(params.get("max_side", "16384"))
        self.max_request_pixels = int(params.get("max_request_pixels", "64000000"))
        self.max_request_bytes = int(params.get("max_request_bytes", str(64 * 1024 * 1024)))
        # the stub's parent is tritonserver: one budget file per server, shared by its preprocess instances
        self.budget = DecodeBudget(budget_path(os.getppid()), int(params.get("max_pixels_in_flight", "64000000")),
                                   int(params.get("always_admit_pixels", "4000000")))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                blobs = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
                images, meta = preprocess_batch(list(blobs), self.size, max_pixels=self.max_pixels,
                                                max_side=self.max_side, max_request_pixels=self.max_request_pixels,
                                                max_request_bytes=self.max_request_bytes, admit=self.budget.admit)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("images", images), pb_utils.Tensor("meta", meta)]))
            except ImageError as error:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"preprocess: {error}", pb_utils.TritonError.INVALID_ARG)))
            except BusyError as error:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"preprocess: {error}", pb_utils.TritonError.UNAVAILABLE)))
            except Exception as error:  # never let one request take the whole batch down
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"preprocess: {type(error).__name__}: {error}")))
            finally:
                self.budget.release()
        return responses
