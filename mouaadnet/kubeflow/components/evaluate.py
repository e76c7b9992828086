from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from mouaadnet.kubeflow.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(checkpoint: Input[Model], onnx_fp32: Input[Model], onnx_int8: Input[Model], dataset: Input[Dataset],
             config: str, int8_variant: str, min_ap50: float, max_model_mb: float, max_latency_ms: float,
             serve_precision: str, parent_run_id: str, experiment: str, prepare_run_id: str, train_run_id: str,
             reparam_run_id: str, qat_run_id: str, export_run_id: str, real_val: str, metrics: Output[Metrics]
             ) -> NamedTuple("Evaluated", [("passed", bool), ("publish", str), ("primary_metric", float)]):
    """Quality gates (mouaadnet.evaluation.gates + FP32 AP50 / size / latency budgets) -> pass/fail, and what to publish."""
    import os
    from collections import namedtuple

    from mouaadnet.pipeline.steps import evaluate_step

    runs = {"prepare_data": prepare_run_id, "train": train_run_id, "reparameterize": reparam_run_id,
            "qat": qat_run_id, "export_onnx": export_run_id}
    r = evaluate_step(os.path.join(checkpoint.path, "best.pt"), onnx_fp32.path, onnx_int8.path, dataset.path, config,
                      int8_variant, min_ap50, max_model_mb, max_latency_ms, serve_precision,
                      parent_run_id=parent_run_id, step_runs=runs, experiment=experiment, real_val=real_val)
    for name, value in r["metrics"].items():
        metrics.log_metric(name, value)
    metrics.metadata["failed_gates"] = ",".join(r["failed"])
    decision = serve_precision if r["passed"] else "none"
    return namedtuple("Evaluated", ["passed", "publish", "primary_metric"])(bool(r["passed"]), decision,
                                                                          float(r["primary_metric"]))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gate_decision(publish: str) -> str:
    """evaluate's publish decision ("fp32" / "int8" / "none") as the task's single output.

    kfp.local resolves a task output inside a dsl.If condition only when it is the task's `Output`
    (a named output such as `evaluate-publish` is looked up as a pipeline input and the branch is skipped).
    """
    return publish
