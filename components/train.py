from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(dataset: Input[Dataset], config: str, data_fingerprint: str, epochs: int, steps_per_epoch: int,
          experiment: str, pretrained: str, checkpoint: Output[Model], metrics: Output[Metrics]
          ) -> NamedTuple("Trained", [("best_score", float), ("mlflow_run_id", str)]):
    """Train on the versioned dataset (config and data fingerprint are inputs, so they key the cache), starting
    from the ``pretrained`` checkpoint ("" = from scratch)."""
    from collections import namedtuple

    from mouaadnet.pipeline.steps import train_step

    result = train_step(dataset.path, config, checkpoint.path, epochs, steps_per_epoch, data_fingerprint, experiment,
                        pretrained=pretrained)
    for name, value in result["metrics"].items():
        metrics.log_metric(name.replace("/", "_"), value)
    checkpoint.metadata.update({"data_fingerprint": data_fingerprint, "best_epoch": result["best_epoch"]})
    return namedtuple("Trained", ["best_score", "mlflow_run_id"])(float(result["best_score"]), result["run_id"])
