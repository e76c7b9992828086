from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from mouaadnet.kubeflow.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export_onnx(deploy: Input[Model], qat_model: Input[Model], dataset: Input[Dataset], size: int, experiment: str,
                onnx_fp32: Output[Model], onnx_int8: Output[Model]
                ) -> NamedTuple("Exported", [("int8_variant", str), ("fp32_model_id", str), ("int8_model_id", str), ("mlflow_run_id", str)]):
    """FP32 and INT8 (QAT ranges) ONNX with sidecars, both logged with mlflow.onnx.log_model."""
    import os
    from collections import namedtuple

    from mouaadnet.pipeline.steps import export_step

    r = export_step(os.path.join(deploy.path, "deploy.pt"), dataset.path, onnx_fp32.path, onnx_int8.path,
                    os.path.join(qat_model.path, "qat.pt"), size, experiment)
    onnx_fp32.metadata.update({"mb": r["fp32_mb"], "mlflow_model_id": r["fp32_model_id"]})
    onnx_int8.metadata.update({"mb": r["int8_mb"], "mlflow_model_id": r["int8_model_id"], "variant": r["int8_variant"]})
    out = namedtuple("Exported", ["int8_variant", "fp32_model_id", "int8_model_id", "mlflow_run_id"])
    return out(r["int8_variant"], r["fp32_model_id"], r["int8_model_id"], r["run_id"])
