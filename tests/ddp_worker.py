"""What tests/test_distributed.py runs under torchrun (not a test module itself).

    torchrun ... tests/ddp_worker.py steps CASES_JSON OUT     a few optimisation steps per case -> OUT/<case>.pt
    torchrun ... tests/ddp_worker.py cli ARGS...              `mouaadnet` ARGS, with a fault injected when
                                                              MOUAADNET_TEST_KILL="rank:epoch:step" is set: that
                                                              rank SIGKILLs itself before that step (1-based)
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mouaadnet.training import distributed
from mouaadnet.training.config import TrainConfig
from mouaadnet.training.recipe import step_modes
from mouaadnet.training.trainer import Trainer


def run_steps(trainer: Trainer, steps: int, freeze_bn: bool) -> dict:
    """``steps`` optimisation steps of epoch 0 (the trainer's own scene/crop schedule and batch streams).

    freeze_bn: BatchNorm layers normalise with their running statistics (eval mode), so a sample's forward pass
    does not depend on which other samples share its batch. Returns per-step losses, the weights after the
    first step and the parameters that got no gradient in the last step."""
    cfg = trainer.cfg
    trainer.train_module.train()
    if freeze_bn:
        for module in trainer.model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()
    modes = step_modes(steps, cfg.data.crop_fraction, "scene" in trainer.streams, "crop" in trainer.streams)
    iterators = {m: s.epoch(0, modes.count(m)) for m, s in trainer.streams.items() if m in modes}
    losses, first = [], None
    for mode in modes:
        losses.append(trainer.optimizer_step(next(iterators[mode]), mode)["loss"])
        if first is None:
            first = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    no_grad = sorted(name for name, p in trainer.model.named_parameters() if p.grad is None)
    return {"modes": modes, "losses": losses, "first_step": first, "no_grad": no_grad,
            "final": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}}


def steps_main(cases_json: str, out: str) -> None:
    cases = json.loads(cases_json)
    ctx = distributed.setup("cpu")
    try:
        for name, case in cases.items():
            cfg = TrainConfig.model_validate(case["config"])
            trainer = Trainer(cfg, out, progress=False, dist=ctx)
            result = run_steps(trainer, case["steps"], case.get("freeze_bn", False))
            result["world_size"] = ctx.world_size
            if ctx.is_main:
                torch.save(result, Path(out) / f"{name}.pt")
    finally:
        distributed.shutdown()


def cli_main(args: list[str]) -> None:
    fault = os.environ.get("MOUAADNET_TEST_KILL")
    if fault:
        rank, epoch, step = (int(x) for x in fault.split(":"))
        if int(os.environ.get("RANK", "0")) == rank:
            original = Trainer.optimizer_step
            counter = {"step": 0, "epoch": None}

            def killing_step(self, batch, mode):
                if counter["epoch"] != self.epoch:
                    counter.update(epoch=self.epoch, step=0)
                counter["step"] += 1
                if self.epoch == epoch and counter["step"] == step:
                    os.kill(os.getpid(), signal.SIGKILL)  # a rank lost mid-epoch (OOM killer, node failure)
                return original(self, batch, mode)

            Trainer.optimizer_step = killing_step
    from mouaadnet.cli.main import app

    app(args, prog_name="mouaadnet")


if __name__ == "__main__":
    if sys.argv[1] == "steps":
        steps_main(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "cli":
        cli_main(sys.argv[2:])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]}")
