"""MLflow parent run of a pipeline run: opened first, ended by the exit handler (FAILED if any step failed)."""

from kfp import dsl

from mouaadnet.kubeflow.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def start_run(experiment: str, kfp_run_id: str, config: str, data_version: str, epochs: int, steps_per_epoch: int,
              qat_steps: int, export_size: int, min_ap50: float, max_model_mb: float, max_latency_ms: float,
              build_tensorrt: bool, target_backend: str, serve_precision: str) -> str:
    """Open the MLflow parent run with the pipeline parameters, git commit and KFP run id; returns its id."""
    from mouaadnet.pipeline.lineage import start_pipeline_run

    params = {"config": config, "data_version": data_version, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
              "qat_steps": qat_steps, "export_size": export_size, "min_ap50": min_ap50, "max_model_mb": max_model_mb,
              "max_latency_ms": max_latency_ms, "build_tensorrt": build_tensorrt, "target_backend": target_backend,
              "serve_precision": serve_precision, "kfp_run_id": kfp_run_id}
    return start_pipeline_run(experiment, params, kfp_run_id)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finish_run(experiment: str, kfp_run_id: str, status: dsl.PipelineTaskFinalStatus) -> str:
    """Exit handler: the parent run ends FINISHED when every step succeeded, else FAILED."""
    from mouaadnet.pipeline.lineage import finish_pipeline_run

    error = f"{status.pipeline_task_name}: {status.error_message}" if status.state != "SUCCEEDED" else ""
    return finish_pipeline_run(experiment, kfp_run_id, status.state, error) or ""
