"""The MouaadNet-Ultra pipeline: versioned data -> train -> reparameterize -> QAT -> ONNX (FP32, INT8)
-> [TensorRT] -> quality gates -> publish (Triton repository + MLflow Model Registry).

- Runs locally with `mouaadnet pipeline run` (kfp.local SubprocessRunner) and, unchanged, on a Kubeflow cluster
  (`mouaadnet pipeline compile` / `submit`). The compiled spec `cluster/mouaadnet.yaml` is committed.
- Caching: prepare_data is keyed by `data_version` (the md5 data.dvc pins; the CLI always fills it in), train by
  the dataset artifact, the config text and the data fingerprint, the later steps by their upstream artifacts.
  Run-specific steps (start_run, evaluate, compile_tensorrt, publish, finish_run) never cache.
- Retries with exponential backoff on the steps that touch the network: data pull and publish.
- Exit handler: `finish_run` ends the MLflow parent run FINISHED, or FAILED when any step failed.
- No secrets in the spec: on a cluster every task reads S3 / MLflow settings from the Kubernetes Secret
  `mouaadnet-credentials` (kfp-kubernetes `use_secret_as_env`, optional keys); locally from the environment.
- Training scale: `num_nodes` x `gpus_per_node`. One node without GPUs: `nproc_per_node` processes (1: in the
  task, kfp.local, `make run`; more: torchrun, gloo); one node with G GPUs: the task requests G GPUs and runs torchrun in its pod; N nodes: the task submits a Kubeflow
  Trainer TrainJob (same image, same entry point), streams its rank-0 log and fails with it; dataset and
  checkpoint travel through the ReadWriteMany PVC `train_volume` (see docs/DISTRIBUTED.md).
- Preemption: on one node the train step copies its checkpoints to its MLflow run's artifact store every epoch; a
  run re-submitted with the same parameters reuses the cached steps and resumes that MLflow run (README, "The
  long run"). Folders the config reads outside data/ are checked against `data_pins` before training.
"""

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Input, Model

import mouaadnet.kubeflow.components.image as component_image
from mouaadnet.kubeflow.components import (
    compile_tensorrt,
    evaluate,
    export_onnx,
    finish_run,
    gate_decision,
    prepare_data,
    publish,
    qat,
    reparameterize,
    start_run,
    train,
)
from mouaadnet.pipeline.trainjob import SECRET_KEYS, SECRET_NAME, SHARED_DIR

PIPELINE_NAME = "mouaadnet-ultra"
SECRET_ENV = {name: name for name in SECRET_KEYS}  # the same keys reach the TrainJob pods (secretKeyRef)
NETWORK_RETRY = {"num_retries": 3, "backoff_duration": "30s", "backoff_factor": 2.0, "backoff_max_duration": "600s"}


def _with_env(task: dsl.PipelineTask, cache: bool = True) -> dsl.PipelineTask:
    """Credentials from the cluster Secret (ignored by kfp.local, which passes the environment through)."""
    kubernetes.use_secret_as_env(task, secret_name=SECRET_NAME, secret_key_to_env=SECRET_ENV, optional=True)
    task.set_caching_options(cache)
    return task


@dsl.pipeline(name="release", description="Trained checkpoint -> reparameterize, QAT, ONNX, [TensorRT], gates, publish.")
def release(
    checkpoint: Input[Model],
    train_run_id: str,
    dataset: Input[Dataset],
    config: str,
    qat_steps: int,
    export_size: int,
    build_tensorrt: bool,
    min_ap50: float,
    max_model_mb: float,
    max_latency_ms: float,
    serve_precision: str,
    triton_repo: str,
    target_backend: str,
    registered_model: str,
    experiment: str,
    parent_run_id: str,
    prepare_run_id: str,
    kfp_run_id: str,
    real_val: str,
    shipped: str,
):
    """Everything after training, whichever way it trained."""
    fused = _with_env(reparameterize(checkpoint=checkpoint, dataset=dataset, experiment=experiment))
    quant = _with_env(qat(checkpoint=checkpoint, dataset=dataset, config=config, steps=qat_steps,
                          experiment=experiment))
    exported = _with_env(export_onnx(deploy=fused.outputs["deploy"], qat_model=quant.outputs["qat_model"],
                                     dataset=dataset, size=export_size, experiment=experiment))

    with dsl.If(build_tensorrt == True, name="build-tensorrt"):  # noqa: E712 - a KFP condition, not Python
        engine = _with_env(compile_tensorrt(onnx_model=exported.outputs["onnx_int8"], precision="int8",
                                            parent_run_id=parent_run_id, experiment=experiment), cache=False)
        engine.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)

    gates = _with_env(evaluate(
        checkpoint=checkpoint, onnx_fp32=exported.outputs["onnx_fp32"],
        onnx_int8=exported.outputs["onnx_int8"], dataset=dataset, config=config,
        int8_variant=exported.outputs["int8_variant"], min_ap50=min_ap50, max_model_mb=max_model_mb,
        max_latency_ms=max_latency_ms, serve_precision=serve_precision, parent_run_id=parent_run_id,
        experiment=experiment, prepare_run_id=prepare_run_id, train_run_id=train_run_id,
        reparam_run_id=fused.outputs["Output"], qat_run_id=quant.outputs["Output"],
        export_run_id=exported.outputs["mlflow_run_id"], real_val=real_val), cache=False)

    # publish only on pass: evaluate's `publish` output is "fp32" / "int8" (serve_precision) or "none"
    decision = _with_env(gate_decision(publish=gates.outputs["publish"]), cache=False)
    for precision in ("fp32", "int8"):
        with dsl.If(decision.output == precision, name=f"gates-passed-{precision}"):
            published = _with_env(publish(
                onnx_model=exported.outputs[f"onnx_{precision}"], model_id=exported.outputs[f"{precision}_model_id"],
                primary_metric=gates.outputs["primary_metric"], triton_repo=triton_repo, backend=target_backend,
                registered_model=registered_model, parent_run_id=parent_run_id, kfp_run_id=kfp_run_id,
                experiment=experiment, real_val=real_val, shipped=shipped), cache=False)
            published.set_retry(**NETWORK_RETRY)
            published.set_display_name(f"publish-{precision}")


@dsl.pipeline(name=PIPELINE_NAME, description="MouaadNet-Ultra: versioned data to a served, registered model.")
def mouaadnet_pipeline(
    config: str = "configs/pipeline.yaml",
    data_version: str = "",
    epochs: int = 0,
    steps_per_epoch: int = 0,
    qat_steps: int = 30,
    export_size: int = 320,
    min_ap50: float = 0.0,
    max_model_mb: float = 5.0,
    max_latency_ms: float = 250.0,
    build_tensorrt: bool = False,
    target_backend: str = "python",
    serve_precision: str = "fp32",
    triton_repo: str = "triton_repo",
    registered_model: str = "mouaadnet-detector",
    experiment: str = "mouaadnet-pipeline",
    repo_dir: str = ".",
    num_nodes: int = 1,
    gpus_per_node: int = 0,
    train_volume: str = "mouaadnet-train",
    trainer_runtime: str = "torch-distributed",
    pretrained: str = "auto",
    real_val: str = "examples/real",
    shipped: str = "weights",
    data_pins: str = "",
    nproc_per_node: int = 1,
    resume_from: str = "",
):
    """config: YAML text or a path relative to repo_dir; data_version: the md5 data.dvc pins (refused if it
    differs); epochs / steps_per_epoch: 0 = the config's; min_ap50, max_model_mb, max_latency_ms: gates on top
    of mouaadnet.evaluation.gates; target_backend: python | onnxruntime (Triton backend of the published model);
    serve_precision: fp32 | int8 (which ONNX is published); num_nodes / gpus_per_node: where train runs (1 / 0:
    one process); train_volume: ReadWriteMany PVC for num_nodes > 1; trainer_runtime: its ClusterTrainingRuntime;
    pretrained: the checkpoint training starts from ("auto" = the shipped weights when weights/ has them, else
    from scratch; "" = from scratch); real_val: the real validation scenes the champion rule judges on
    (comma-separated sources: the first gives real_AP50, and a candidate must also beat the champion on each
    further one, e.g. a held-out photo set); shipped:
    the shipped weights folder, whose default scene ONNX is the registry's first champion (Triton's committed
    version 1; without a manifest there, the first candidate becomes champion); data_pins: the pins file of
    the config (DVC md5 of each folder it reads outside data/; the CLI fills it in; a changed folder is
    refused); nproc_per_node: CPU training processes on one node without GPUs (torchrun when > 1, 0 = one per
    core when the node is idle). A train step re-run with the same inputs after a preemption resumes its
    unfinished MLflow run from the checkpoint it copies to the run's artifact store every epoch; resume_from: a
    carried checkpoint (`mouaadnet pipeline carry`) the train step continues when its own store has no such run
    (another machine, another store)."""
    kfp_run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    exit_task = _with_env(finish_run(experiment=experiment, kfp_run_id=kfp_run_id), cache=False)
    with dsl.ExitHandler(exit_task, name="mlflow-parent-run"):
        parent = _with_env(start_run(
            experiment=experiment, kfp_run_id=kfp_run_id, config=config, data_version=data_version, epochs=epochs,
            steps_per_epoch=steps_per_epoch, qat_steps=qat_steps, export_size=export_size, min_ap50=min_ap50,
            max_model_mb=max_model_mb, max_latency_ms=max_latency_ms, build_tensorrt=build_tensorrt,
            target_backend=target_backend, serve_precision=serve_precision), cache=False)
        parent.set_display_name("start-mlflow-run")

        data = _with_env(prepare_data(data_version=data_version, repo_dir=repo_dir, experiment=experiment))
        data.set_retry(**NETWORK_RETRY)
        data.after(parent)
        dataset = data.outputs["dataset"]

        train_args = {"dataset": dataset, "config": config, "data_fingerprint": data.outputs["fingerprint"],
                      "epochs": epochs, "steps_per_epoch": steps_per_epoch, "experiment": experiment,
                      "num_nodes": num_nodes, "gpus_per_node": gpus_per_node, "image": component_image.IMAGE,
                      "train_volume": train_volume, "trainer_runtime": trainer_runtime, "pretrained": pretrained,
                      "data_pins": data_pins, "nproc_per_node": nproc_per_node,
                      "resume_from": resume_from}
        release_args = {"dataset": dataset, "config": config, "qat_steps": qat_steps, "export_size": export_size,
                        "build_tensorrt": build_tensorrt, "min_ap50": min_ap50, "max_model_mb": max_model_mb,
                        "max_latency_ms": max_latency_ms, "serve_precision": serve_precision,
                        "triton_repo": triton_repo, "target_backend": target_backend,
                        "registered_model": registered_model, "experiment": experiment,
                        "parent_run_id": parent.output, "prepare_run_id": data.outputs["mlflow_run_id"],
                        "kfp_run_id": kfp_run_id, "real_val": real_val, "shipped": shipped}
        # One train task per way of training (the pod differs: PVC, GPUs, neither); what follows is the same
        # sub-pipeline after each (kfp.local runs neither dsl.OneOf of artifacts nor resources, so no join).
        with dsl.If(num_nodes > 1, name="train-on-nodes"):
            # submits a TrainJob and waits: no GPU here; the dataset and checkpoint go through the shared PVC
            on_nodes = _with_env(train(**train_args))
            on_nodes.set_display_name("train-trainjob").set_cpu_request("1").set_memory_request("2G")
            kubernetes.mount_pvc(on_nodes, pvc_name=train_volume, mount_path=SHARED_DIR)
            release(checkpoint=on_nodes.outputs["checkpoint"], train_run_id=on_nodes.outputs["mlflow_run_id"],
                    **release_args).set_display_name("release")
        with dsl.Elif(gpus_per_node > 0, name="train-on-gpus"):
            # torchrun in this pod, one process per GPU; /dev/shm in memory for NCCL and the data loaders
            on_gpus = _with_env(train(**train_args))
            on_gpus.set_display_name("train-gpus").set_cpu_request("4").set_memory_request("16G")
            on_gpus.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus_per_node)
            kubernetes.empty_dir_mount(on_gpus, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
            release(checkpoint=on_gpus.outputs["checkpoint"], train_run_id=on_gpus.outputs["mlflow_run_id"],
                    **release_args).set_display_name("release")
        with dsl.Else(name="train-one-process"):
            on_cpu = _with_env(train(**train_args))
            on_cpu.set_display_name("train").set_cpu_request("2").set_memory_request("4G")
            release(checkpoint=on_cpu.outputs["checkpoint"], train_run_id=on_cpu.outputs["mlflow_run_id"],
                    **release_args).set_display_name("release")
