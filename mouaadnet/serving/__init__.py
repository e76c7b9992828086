"""Serving: Triton model repository tooling, publish, the tritonserver launcher and the gRPC client.

Modules imported inside the Triton Python backend (prepost) need only numpy, Pillow and onnxruntime, so they run
in the numpy<2 serving venv (.venv-serve) as well as in the main venv; the detector runs through
``mouaadnet.runtime`` (also torch-free).
"""
