from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from mouaadnet.kubeflow.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def qat(checkpoint: Input[Model], dataset: Input[Dataset], config: str, steps: int, experiment: str,
        qat_model: Output[Model]) -> str:
    """Quantization-aware fine-tune of the trained checkpoint (mouaadnet.training.qat); returns the MLflow run id."""
    import os

    from mouaadnet.pipeline.steps import qat_step

    result = qat_step(os.path.join(checkpoint.path, "best.pt"), dataset.path, config, qat_model.path, steps, experiment)
    return result["run_id"]
