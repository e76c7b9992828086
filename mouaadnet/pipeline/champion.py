"""The publish step: which model Triton serves — the registry's champion, judged on a real validation set.

The pipeline's own data may be synthetic (the DVC-pinned default), so a candidate can pass every gate there and
still be worse on real photos than the shipped weights. The champion rule compares person AP50 on a small real
set that ships with the repository (`examples/real`, CC BY 4.0): a candidate is promoted, and published to
Triton, only when it beats the champion there, and, when ``real_val`` names further real sets (comma-separated,
e.g. `examples/real,../shared/data/pennfudan`), on every one of them too, both measured in the same step. The registry's first champion is the shipped model
(`weights/`), which Triton's committed version 1 serves.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mouaadnet.pipeline.lineage import (
    DEFAULT_EXPERIMENT,
    DEFAULT_REGISTERED_MODEL,
    KFP_RUN_TAG,
    PRIMARY_METRIC,
    _champion,
    _client,
    _mlflow,
    log_onnx_model,
    records_failure,
    step_run,
)
from mouaadnet.pipeline.params import PipelineStepError


@dataclass
class Decision:
    promote: bool
    candidate_metric: float
    champion_version: str | None
    champion_metric: float
    message: str


def real_sets(real_val: str | Path) -> list[str]:
    """The real validation sources of ``real_val``: comma-separated; the first one gives the primary metric."""
    return [part.strip() for part in str(real_val).split(",") if part.strip()]


def real_ap50(onnx_path: str | Path, real_val: str | Path) -> float:
    """Person AP50 of a scene ONNX on the first real validation source of ``real_val`` (letterbox, as served)."""
    return set_ap50(onnx_path, real_sets(real_val)[0])


def set_ap50(onnx_path: str | Path, source: str) -> float:
    """Person AP50 of a scene ONNX on one real validation source (a YOLO or COCO folder)."""
    from mouaadnet.evaluation.evaluate import evaluate_sets
    from mouaadnet.evaluation.gates import load_eval_sets
    from mouaadnet.evaluation.onnx_eval import OnnxModel

    sets = [s for s in load_eval_sets([source]) if s.mode == "scene"]
    if not sets:
        raise ValueError(f"{source}: no scene images to judge the champion on")
    result = evaluate_sets(OnnxModel([onnx_path]), sets, scene_size=onnx_input_size(onnx_path), crop_size=112)[0]
    return float(result.metrics["AP50"])


def beats_on_every_set(candidate: dict[str, float], champion: dict[str, float]) -> tuple[bool, str]:
    """The candidate must be strictly better on every set both were measured on (a tie keeps the champion)."""
    lines = [f"{name} {candidate[name]:.4f} vs {champion.get(name, math.nan):.4f}" for name in candidate]
    better = all(math.isfinite(candidate[name]) and (not math.isfinite(champion.get(name, math.nan))
                                                     or candidate[name] > champion[name]) for name in candidate)
    return better, "; ".join(lines)


def onnx_input_size(path: str | Path) -> int:
    """The square input size of an exported graph (320 when the graph leaves it dynamic)."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value or 320)


def decide(candidate: float, champion: tuple[str, float] | None) -> Decision:
    """Promote when there is no champion, or the candidate is strictly better on the real set."""
    if champion is None:
        return Decision(True, candidate, None, math.nan, f"no champion yet: candidate ({PRIMARY_METRIC} "
                                                           f"{candidate:.4f}) becomes champion")
    version, metric = champion
    if math.isfinite(candidate) and (not math.isfinite(metric) or candidate > metric):
        return Decision(True, candidate, version, metric, f"candidate {PRIMARY_METRIC} {candidate:.4f} beats champion "
                                                          f"v{version} ({metric:.4f}): promoted")
    return Decision(False, candidate, version, metric, f"candidate {PRIMARY_METRIC} {candidate:.4f} is not better "
                                                       f"than champion v{version} ({metric:.4f}): NOT promoted, "
                                                       "Triton keeps serving the champion")


@records_failure("publish")
def publish_step(onnx_dir: str | os.PathLike, triton_repo: str | os.PathLike, model_id: str = "",
                 primary_metric: float = float("nan"), backend: str = "python", registered_model: str = DEFAULT_REGISTERED_MODEL,
                 triton_model: str = "detector", parent_run_id: str = "", kfp_run_id: str = "",
                 experiment: str = DEFAULT_EXPERIMENT, real_val: str = "", shipped: str = "") -> dict[str, Any]:
    """Register the candidate in the MLflow Model Registry (alias ``candidate``); promote it to ``champion`` and
    publish it to Triton (next version, sha256-checked) only when it beats the champion on the primary metric
    (``decide``). With no champion yet, the default scene ONNX of the shipped weights folder ``shipped`` (served
    by Triton's committed version 1) is registered first as the champion. Tags link registry <-> Triton version and sha256."""
    from mouaadnet.serving.publish import publish

    artifact = Path(onnx_dir) / ("model.plan" if backend == "tensorrt" else "model.onnx")
    with step_run("publish", parent_run_id, experiment) as run:
        mlflow = _mlflow()
        client = _client()
        champion = _champion(client, registered_model)
        if champion is None and shipped and (Path(shipped) / "manifest.json").is_file():
            champion = _register_shipped(client, registered_model, shipped, real_val, triton_model, triton_repo)
        elif champion is None and shipped:
            print(f"publish: no shipped weights in {shipped}: the first candidate becomes champion", flush=True)
        if champion is not None and real_val:
            champion = _measure_champion(client, registered_model, champion, real_val, triton_model, triton_repo)
        decision = decide(primary_metric, champion)
        extra = real_sets(real_val)[1:]
        if decision.promote and champion is not None and extra:
            decision = _every_set(decision, artifact, _served_file(client, registered_model, champion[0],
                                                                    triton_model, triton_repo), extra)
        print(f"publish: {decision.message}", flush=True)
        published = publish(artifact, triton_repo, model=triton_model, backend=backend) if decision.promote else None
        uri = model_id if "/" in model_id or ":" in model_id else f"models:/{model_id}"
        tags = {"triton_model": triton_model, "backend": backend, PRIMARY_METRIC: f"{primary_metric}",
                "pipeline_run_id": parent_run_id, KFP_RUN_TAG: kfp_run_id, "promoted": str(decision.promote).lower()}
        if published is not None:
            tags.update({"triton_version": str(published.version), "sha256": published.sha256,
                         "triton_repo": str(Path(triton_repo).resolve())})
        version = mlflow.register_model(uri, registered_model, tags=tags)
        client.set_registered_model_alias(registered_model, "candidate", version.version)
        if decision.promote:
            client.set_registered_model_alias(registered_model, "champion", version.version)
        mlflow.log_params({"registered_model": registered_model, "registry_version": version.version,
                           "triton_version": published.version if published else "unchanged", "backend": backend})
        mlflow.set_tags({"champion": str(decision.promote).lower(), "decision": decision.message,
                         "previous_champion": decision.champion_version or "",
                         **({"sha256": published.sha256} if published else {})})
        if published is not None:  # the published version's own sidecar points back at the registry
            meta_path = published.path / f"{artifact.name}.json"
            meta = json.loads(meta_path.read_text())
            meta["registry"] = {"model": registered_model, "version": str(version.version), "uri": uri}
            meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        if parent_run_id:
            client.set_tag(parent_run_id, "registry_version", str(version.version))
            client.set_tag(parent_run_id, "promoted", str(decision.promote).lower())
            client.set_tag(parent_run_id, "triton_version", str(published.version) if published else "unchanged")
        return {"registry_version": str(version.version), "triton_version": published.version if published else -1,
                "sha256": published.sha256 if published else "", "champion": decision.promote,
                "decision": decision.message, "path": str(published.path) if published else "",
                "run_id": run.info.run_id}


def _every_set(decision: Decision, candidate: Path, champion: Path | None, sources: list[str]) -> Decision:
    """Veto a promotion unless the candidate also beats the champion on each further real set (both measured now,
    in this step, from the files: the candidate's and the one Triton serves for the champion)."""
    if champion is None:
        decision.promote = False
        decision.message = decision.message.removesuffix(": promoted") + f"; the champion's served file is gone, " \
            f"so {', '.join(sources)} cannot be compared: NOT promoted"
        return decision
    ours = {source: set_ap50(candidate, source) for source in sources}
    theirs = {source: set_ap50(champion, source) for source in sources}
    better, table = beats_on_every_set(ours, theirs)
    decision.promote = better
    decision.message = decision.message.removesuffix(": promoted") + f"; AP50 on each further real set, candidate " \
        f"vs champion: {table}: " + ("promoted" if better else "NOT promoted, Triton keeps serving the champion")
    return decision


def _served_file(client, registered_model: str, version: str, triton_model: str,
                 triton_repo: str | os.PathLike) -> Path | None:
    """The ONNX Triton serves for a registry version (its ``triton_version`` tag), None when it is gone."""
    served = client.get_model_version(registered_model, version).tags.get("triton_version", "")
    path = Path(triton_repo) / triton_model / served / "model.onnx"
    return path if served and path.is_file() else None


def _measure_champion(client, registered_model: str, champion: tuple[str, float], real_val: str,
                      triton_model: str, triton_repo: str | os.PathLike) -> tuple[str, float]:
    """A champion registered without the metric (before the rule, or without a real set) is measured now on
    ``real_val`` from the file Triton serves for it, so that "unknown" never loses to any candidate by default."""
    version, metric = champion
    if math.isfinite(metric):
        return champion
    path = _served_file(client, registered_model, version, triton_model, triton_repo)
    if path is None:
        print(f"publish: champion v{version} has no {PRIMARY_METRIC} and its Triton file is gone: "
              "it cannot be measured", flush=True)
        return champion
    metric = real_ap50(path, real_val)
    client.set_model_version_tag(registered_model, version, PRIMARY_METRIC, f"{metric}")
    print(f"publish: champion v{version} had no {PRIMARY_METRIC}; measured its Triton file {path} on "
          f"{real_val}: {metric:.4f}", flush=True)
    return version, metric


def _register_shipped(client, registered_model: str, weights: str, real_val: str, triton_model: str,
                      triton_repo: str | os.PathLike) -> tuple[str, float]:
    """Log and register the shipped weights' default scene ONNX as the registry's first champion; returns
    (version, metric)."""
    import torch

    from model.artifacts import read_sidecar
    from mouaadnet.data.letterbox import load_images
    from mouaadnet.weights import WeightsError, default_model

    try:
        shipped = default_model("scene", directory=weights)  # sha256-checked against its sidecar
    except WeightsError as error:
        raise PipelineStepError(f"the registry's first champion: {error}") from None
    sha256 = read_sidecar(shipped)["sha256"]
    metric = real_ap50(shipped, real_val) if real_val else float("nan")
    size = onnx_input_size(shipped)
    images = sorted((Path(real_sets(real_val)[0]) / "images").glob("*.jpg"))[:1] if real_val else []
    example = (load_images(images, size) if images else torch.rand(1, 3, size, size)).numpy()
    model_id = log_onnx_model(shipped, "shipped_detector", example)
    uri = model_id if "/" in model_id or ":" in model_id else f"models:/{model_id}"
    version = _mlflow().register_model(uri, registered_model, tags={
        "triton_model": triton_model, "triton_version": "1", "sha256": sha256, "shipped": "true",
        "triton_repo": str(Path(triton_repo).resolve()), PRIMARY_METRIC: f"{metric}", "promoted": "true"})
    client.set_registered_model_alias(registered_model, "champion", version.version)
    print(f"publish: registered the shipped weights {shipped.name} as champion v{version.version} "
          f"({PRIMARY_METRIC} {metric:.4f})", flush=True)
    return version.version, metric
