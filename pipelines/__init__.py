"""Kubeflow pipeline definitions (`mouaadnet.py`) and their compiled specs (`mouaadnet.yaml`)."""
