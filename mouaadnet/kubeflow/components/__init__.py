"""Kubeflow Pipelines v2 components, one per pipeline step.

Each component is a lightweight Python component (`@dsl.component(base_image=IMAGE)`) whose body imports the
library and calls one function of `mouaadnet.pipeline.steps` (the parent run: `mouaadnet.pipeline.lineage`);
files travel as KFP artifacts, small values as parameters. `install_kfp_package=False`: the project image already
has kfp (and kfp.local runs in the venv).
"""

from mouaadnet.kubeflow.components.compile_tensorrt import compile_tensorrt
from mouaadnet.kubeflow.components.evaluate import evaluate, gate_decision
from mouaadnet.kubeflow.components.export_onnx import export_onnx
from mouaadnet.kubeflow.components.image import IMAGE
from mouaadnet.kubeflow.components.parent_run import finish_run, start_run
from mouaadnet.kubeflow.components.prepare_data import prepare_data
from mouaadnet.kubeflow.components.publish import publish
from mouaadnet.kubeflow.components.qat import qat
from mouaadnet.kubeflow.components.reparameterize import reparameterize
from mouaadnet.kubeflow.components.train import train

__all__ = ["IMAGE", "start_run", "finish_run", "prepare_data", "train", "reparameterize", "qat", "export_onnx",
           "compile_tensorrt", "evaluate", "gate_decision", "publish"]
