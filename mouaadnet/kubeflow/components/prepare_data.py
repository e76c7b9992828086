from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from mouaadnet.kubeflow.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare_data(data_version: str, repo_dir: str, experiment: str, dataset: Output[Dataset]
                 ) -> NamedTuple("PreparedData", [("fingerprint", str), ("mlflow_run_id", str)]):
    """dvc pull (when a remote is configured), verify (DVC md5 + data check), refuse dirty data, copy it out."""
    from collections import namedtuple

    from mouaadnet.pipeline.steps import prepare_data as step

    result = step(dataset.path, repo_dir, data_version, experiment)
    dataset.metadata.update({"fingerprint": result["fingerprint"], "files": result["files"]})
    return namedtuple("PreparedData", ["fingerprint", "mlflow_run_id"])(result["fingerprint"], result["run_id"])
