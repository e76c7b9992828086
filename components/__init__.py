"""Kubeflow Pipelines v2 components, one per pipeline step.

Each component is a lightweight Python component (`@dsl.component(base_image=IMAGE)`) whose body imports the
library and calls one function of `mouaadnet.pipeline.steps` (the parent run: `mouaadnet.pipeline.lineage`);
files travel as KFP artifacts, small values as parameters. `install_kfp_package=False`: the project image already
has kfp (and kfp.local runs in the venv).
"""

from components.compile_tensorrt import compile_tensorrt
from components.evaluate import evaluate, gate_decision
from components.export_onnx import export_onnx
from components.image import IMAGE
from components.prepare_data import prepare_data
from components.publish import publish
from components.qat import qat
from components.reparameterize import reparameterize
from components.tracking import finish_run, start_run
from components.train import train

__all__ = ["IMAGE", "start_run", "finish_run", "prepare_data", "train", "reparameterize", "qat", "export_onnx",
           "compile_tensorrt", "evaluate", "gate_decision", "publish"]
