from kfp import dsl
from kfp.dsl import Input, Model, Output

from mouaadnet.kubeflow.components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def compile_tensorrt(onnx_model: Input[Model], precision: str, parent_run_id: str, experiment: str,
                     engine: Output[Model]) -> str:
    """TensorRT engine from the ONNX graph (GPU node, image built with the TensorRT base)."""
    from mouaadnet.pipeline.steps import compile_tensorrt_step

    return compile_tensorrt_step(onnx_model.path, engine.path, precision, parent_run_id, experiment)["run_id"]
