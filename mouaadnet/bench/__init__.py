"""Inference speed: PyTorch / ONNX Runtime latency and throughput, and the YOLOv8n-architecture peer measured beside."""
