"""The Kubeflow pipeline: its definition (``pipeline``), one component per step (``components``, each body calls
one function of ``mouaadnet.pipeline.steps``) and compile / run under kfp.local / submit (``runner``). The compiled
spec and the cluster objects it needs are in the repository's ``cluster/`` folder."""
