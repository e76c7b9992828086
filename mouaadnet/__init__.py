"""MouaadNet-Ultra: the library and CLI around the network in `model/`."""

import os

# Set before torch loads OpenMP. Training, evaluation and the pipeline's tasks often share a 2-core machine with
# tests or another pipeline; OpenMP threads that spin-wait for a core they do not get collapse throughput 5-10x
# (docs/BENCHMARKS.md, "Training under contention"). PASSIVE makes idle threads sleep; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
