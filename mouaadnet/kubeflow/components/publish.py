from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Input, Model

from mouaadnet.kubeflow.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def publish(onnx_model: Input[Model], model_id: str, primary_metric: float, triton_repo: str, backend: str,
            registered_model: str, parent_run_id: str, kfp_run_id: str, experiment: str, real_val: str, shipped: str
            ) -> NamedTuple("PublishedModel", [("registry_version", str), ("triton_version", int), ("sha256", str)]):
    """MLflow registry version (alias candidate); champion + next Triton version only when it beats the champion
    on the real validation set (the shipped weights are the first champion)."""
    from collections import namedtuple

    from mouaadnet.pipeline.champion import publish_step

    r = publish_step(onnx_model.path, triton_repo, model_id, primary_metric, backend, registered_model,
                     parent_run_id=parent_run_id, kfp_run_id=kfp_run_id, experiment=experiment, real_val=real_val,
                     shipped=shipped)
    out = namedtuple("PublishedModel", ["registry_version", "triton_version", "sha256"])
    return out(r["registry_version"], int(r["triton_version"]), r["sha256"])
