"""Evaluation: one metric implementation for PyTorch and ONNX Runtime models, plots and the quality gates."""
