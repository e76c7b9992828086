from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from mouaadnet.kubeflow.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(dataset: Input[Dataset], config: str, data_fingerprint: str, epochs: int, steps_per_epoch: int,
          experiment: str, checkpoint: Output[Model], metrics: Output[Metrics], pretrained: str = "auto", num_nodes: int = 1,
          gpus_per_node: int = 0, image: str = "", train_volume: str = "", trainer_runtime: str = "torch-distributed",
          data_pins: str = "", nproc_per_node: int = 1, resume_from: str = ""
          ) -> NamedTuple("Trained", [("best_score", float), ("mlflow_run_id", str)]):
    """Train on the versioned dataset (config, data fingerprint and data pins are inputs, so they key the cache),
    starting from ``pretrained`` ("auto" = the shipped weights when present; "" = from scratch). Folders outside
    the dataset are checked against ``data_pins``; a re-run after a preemption resumes the unfinished MLflow run
    of the same inputs from the checkpoint in its artifact store; on another machine, from the carried checkpoint
    ``resume_from`` (``mouaadnet pipeline carry``) when it trained the same inputs.

    num_nodes 1, gpus_per_node 0: nproc_per_node CPU processes (torchrun when > 1; 0 = one per core when idle);
    1 node with G GPUs: torchrun in this pod; N nodes: a Kubeflow Trainer TrainJob running `image`, data and
    checkpoint through the ReadWriteMany PVC `train_volume`."""
    from collections import namedtuple

    from mouaadnet.pipeline.lineage import write_metrics_artifact
    from mouaadnet.pipeline.steps import train_step

    result = train_step(dataset.path, config, checkpoint.path, epochs, steps_per_epoch, data_fingerprint, experiment,
                        pretrained=pretrained, num_nodes=num_nodes, gpus_per_node=gpus_per_node, image=image,
                        train_volume=train_volume, trainer_runtime=trainer_runtime, data_pins=data_pins,
                        nproc_per_node=nproc_per_node, resume_from=resume_from)
    for name, value in result["metrics"].items():
        metrics.log_metric(name.replace("/", "_"), value)
    write_metrics_artifact(metrics.path, metrics.metadata)  # else kfp.local's cache never reuses this step
    checkpoint.metadata.update({"data_fingerprint": data_fingerprint, "best_epoch": result["best_epoch"],
                                "num_nodes": num_nodes, "gpus_per_node": gpus_per_node,
                                "nproc_per_node": nproc_per_node})
    return namedtuple("Trained", ["best_score", "mlflow_run_id"])(float(result["best_score"]), result["run_id"])
