from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from mouaadnet.kubeflow.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def reparameterize(checkpoint: Input[Model], dataset: Input[Dataset], experiment: str, deploy: Output[Model]) -> str:
    """Fuse RepVGG branches and Conv+BN, checked against the training form; returns the MLflow run id."""
    import os

    from mouaadnet.pipeline.steps import reparameterize_step

    result = reparameterize_step(os.path.join(checkpoint.path, "best.pt"), dataset.path, deploy.path, experiment)
    deploy.metadata.update({"params": result["params"], "max_abs_diff": result["max_abs_diff"]})
    return result["run_id"]
