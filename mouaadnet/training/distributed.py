"""Data-parallel training with torch.distributed, for processes that ``torchrun`` started.

torchrun (its elastic agent) starts the processes, sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR, watches them
and ends the whole job when one dies; this module only joins them into one process group and holds the few
collective operations the trainer needs:

- backend: ``nccl`` when the processes train on CUDA GPUs (one GPU per process, ``cuda:LOCAL_RANK``), ``gloo`` on CPU;
- batches: ``data.*_batch_size`` are *global*. Every process draws the same global index sequence (seeded by seed
  and epoch, as one process does) and keeps its own contiguous slice of each global batch (``rank_slice``), so the
  processes together train on exactly the batches one process would;
- loss: each term is divided by the item count of the global batch (``all_reduce_sum`` as the loss's
  ``count_reducer``) and DistributedDataParallel averages gradients, so ``world_size * loss`` is back-propagated:
  the summed gradient is the gradient of the one-process loss of the whole batch;
- BatchNorm: SyncBatchNorm on GPUs (statistics of the global batch); PyTorch has no CPU SyncBatchNorm, so on gloo
  each process normalises its own share (``convert_batchnorm``);
- rank 0 alone validates, writes checkpoints and talks to MLflow; the others wait at a barrier after each epoch.

A single process (no torchrun, or torchrun with one process) never creates a process group: ``SINGLE``.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """Where this process stands among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: one process, no process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- collectives (no-ops for one process) -------------------------------------------------------------
    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over the processes (a new tensor; no gradient flows through it)."""
        if not self.enabled:
            return tensor
        total = tensor.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if not self.enabled:
            return
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()


SINGLE = DistContext()


def launched_by_torchrun() -> bool:
    """True inside a process that torchrun (or another torch.distributed launcher) started."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def current() -> DistContext:
    """The context of an already initialised process group, else ``SINGLE``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return SINGLE
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                       dist.get_backend())


def setup(device: str = "auto", timeout_min: float = 30.0) -> DistContext:
    """Join the process group torchrun prepared (idempotent); ``SINGLE`` when this is the only process.

    ``device`` is the config's: ``nccl`` when the processes will train on CUDA, else ``gloo``."""
    if dist.is_available() and dist.is_initialized():
        return current()
    world = world_size_from_env()
    if world <= 1:
        return SINGLE
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if device == "cuda" and not use_cuda:
        raise RuntimeError("device 'cuda' requested but no CUDA GPU is available (use device: auto or cpu)")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                               f"start at most that many processes per node (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_min))
    return DistContext(rank, world, local_rank, backend)


def shutdown() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: torch.device, ctx: DistContext) -> torch.device:
    """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK``."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def local_batch(global_batch: int, ctx: DistContext, name: str = "batch size") -> int:
    """This process's share of a global batch; the global batch must split evenly."""
    if global_batch % ctx.world_size:
        raise ValueError(f"{name} = {global_batch} is the global batch (all processes together) and must divide "
                         f"evenly by the {ctx.world_size} processes; use a multiple of {ctx.world_size}")
    return global_batch // ctx.world_size


def rank_slice(indices: np.ndarray, global_batch: int, ctx: DistContext) -> np.ndarray:
    """This process's part of a global index draw: batch b of rank r is ``indices[b*G + r*B : b*G + (r+1)*B]``
    (G global, B = G / world size), so the ranks' batches b together are exactly the one-process batch b."""
    if not ctx.enabled:
        return indices
    per_rank = local_batch(global_batch, ctx)
    batches = indices.reshape(-1, global_batch)
    return batches[:, ctx.rank * per_rank:(ctx.rank + 1) * per_rank].reshape(-1)


def rank_seed(seed: int, ctx: DistContext) -> int:
    """The global-RNG seed of one process (dropout draws differ between processes, as they would between the
    halves of one process's batch); the model is built before this, from ``seed``, identically everywhere."""
    return int(np.random.SeedSequence([seed, ctx.rank, ctx.world_size]).generate_state(1)[0])


def convert_batchnorm(model: nn.Module, ctx: DistContext, device: torch.device, sync: bool) -> nn.Module:
    """SyncBatchNorm on GPUs (when ``sync``): the statistics of the global batch. CPU/gloo keeps per-process
    BatchNorm: PyTorch implements SyncBatchNorm for accelerators only."""
    if ctx.enabled and sync and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap(model: nn.Module, ctx: DistContext, device: torch.device, find_unused_parameters: bool) -> nn.Module:
    """DistributedDataParallel around ``model`` (the module itself for one process).

    ``find_unused_parameters``: crop batches leave the detection head unused; DDP must know to not wait for
    its gradients (a parameter no process used keeps ``grad = None``, as in one process)."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused_parameters)


def describe(ctx: DistContext) -> str:
    return "1 process" if not ctx.enabled else f"{ctx.world_size} processes ({ctx.backend})"


def note(message: str, ctx: DistContext) -> None:
    """A line on stderr from rank 0 only."""
    if ctx.is_main:
        print(message, file=sys.stderr, flush=True)


# ---- launching: torchrun does it; these build its command line and report failures to its agent -------------
NPROC_OPTION = "--nproc-per-node"


def strip_option(argv: list[str], option: str = NPROC_OPTION) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE`` (the command line torchrun's workers run)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def torchrun_command(nproc_per_node: int, module_args: list[str], python: str | None = None) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m mouaadnet.cli ARGS``: one machine,
    a rendezvous on a free local port; torchrun's elastic agent starts, watches and stops the processes."""
    return [python or sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"{NPROC_OPTION}={nproc_per_node}", "-m", "mouaadnet.cli", *module_args]


def record_failure(error: BaseException) -> None:
    """Under torchrun: write ``error`` to the agent's error file, so its failure summary names the root cause
    (what ``torch.distributed.elastic.multiprocessing.errors.record`` does for an uncaught exception)."""
    if not launched_by_torchrun() or not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    handler = get_error_handler()
    handler.initialize()
    handler.record_exception(error)
