"""Serving: Triton model repository tooling, the tritonserver launcher, the gRPC client and the benchmark.

Modules imported inside the Triton Python backend (prepost, onnx_model) need only numpy, Pillow and onnxruntime,
so they run in the numpy<2 serving venv (.venv-serve) as well as in the main venv.
"""
