"""The Kubeflow pipeline's library side: the step functions the components call, MLflow lineage and tracking,
the DVC-versioned default data, running/compiling/submitting the pipeline, local services and the `make run` demo."""
