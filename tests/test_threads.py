"""threads: auto — all cores on an idle machine, one fewer per core busy with other work, never below one."""

from __future__ import annotations

import pytest
import torch

from model.config import ConfigError
from mouaadnet.training.config import TrainConfig
from mouaadnet.training.threads import RECHECK_STEPS, apply_threads, auto_threads


@pytest.mark.parametrize(("load", "current", "expected"), [
    (2.0, 2, 2),  # only our own 2 threads: keep both cores
    (0.1, 1, 2),  # idle machine: grow back to all cores
    (3.0, 2, 1),  # one core's worth of other work
    (9.0, 2, 1),  # heavily shared: never below one
])
def test_auto_threads_leaves_cores_to_other_work(load: float, current: int, expected: int) -> None:
    assert auto_threads(load, current, available=2) == expected


@pytest.mark.parametrize(("load", "processes", "available", "expected"), [
    (0.2, 2, 2, 1),  # 2 DDP processes starting on an idle 2-core machine: one core each, never 2 x 2 threads
    (2.0, 2, 2, 1),  # both busy: the sibling is not "other work"
    (2.0, 2, 8, 4),  # 8 idle cores: 4 each
    (6.0, 2, 8, 2),  # 4 cores' worth of other work: 2 each
    (0.5, 4, 2, 1),  # more processes than cores: still one thread each
])
def test_auto_threads_share_the_cores_among_torchrun_processes(load, processes, available, expected) -> None:
    assert auto_threads(load, current=1, available=available, processes=processes) == expected


def test_fixed_threads_are_applied_and_auto_rechecks_only_every_few_steps() -> None:
    before = torch.get_num_threads()
    try:
        apply_threads(1, 0)
        assert torch.get_num_threads() == 1
        assert apply_threads("auto", 1) is None  # not a recheck step
        apply_threads("auto", RECHECK_STEPS)
        assert torch.get_num_threads() >= 1
    finally:
        torch.set_num_threads(before)


def test_threads_config_rejects_zero(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("threads: 0\n")
    with pytest.raises(ConfigError, match="threads"):
        TrainConfig.from_yaml(path)
