"""The export stage, between training and serving: from a checkpoint to deployable, checked files.

- ``exporter``: ``Exporter`` (reparameterization check, FP32 / INT8 ONNX, OpenVINO IR, each with its sidecar) and
  ``gate`` (the quality gates, stored in the sidecar): the one recipe the CLI, the pipeline steps and ``ship`` call;
- ``images``: where the real images of the checks and of INT8 calibration come from;
- ``runtime_choice``: time the variants that passed the gates, write ``runtime_choice.json`` (read by
  ``mouaadnet.runtime.choice``);
- ``ship``: a trained checkpoint -> the shipped weights/ folder (read by ``mouaadnet.weights``);
- ``standin``: the seeded random stand-in model exported like a trained one.

Nothing is imported here: the modules import torch, which a user of one of them may not need yet.
"""
