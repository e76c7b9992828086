"""Plain training progress lines (what the pipeline's train task prints, live, under kfp.local)."""

from __future__ import annotations

import io

from mouaadnet.training.progress import ProgressLog, format_eta


def test_format_eta():
    assert format_eta(7.4) == "7s"
    assert format_eta(125) == "2m05s"
    assert format_eta(3 * 3600 + 61) == "3h01m"
    assert format_eta(float("inf")) == "?" and format_eta(float("nan")) == "?"


def test_a_line_on_the_first_step_then_at_most_every_interval_and_at_each_epoch_end():
    now = [100.0]
    out = io.StringIO()
    log = ProgressLog(total_steps=8, every=10.0, out=out, clock=lambda: now[0])
    said = []
    for step in range(1, 5):  # epoch 1 of 2: 4 steps, 2 s each
        now[0] += 2.0
        said.append(log.step(1, 2, step, 4, loss=1.5, images_per_second=16.0))
    assert [s is not None for s in said] == [True, False, False, True]  # first step, then the epoch's last
    assert said[0] == "progress  epoch 1/2  step 1/4  loss 1.5000  16.0 img/s  ETA 14s"  # 7 steps left at 2 s each
    assert said[3].endswith("ETA 8s")
    now[0] += 12.0  # validation between epochs: the ETA takes it in
    assert log.step(2, 2, 1, 4, 1.2, 16.0) is not None  # more than 10 s since the last line
    assert out.getvalue().count("\n") == 3


def test_resumed_run_counts_from_where_it_stopped():
    now = [0.0]
    log = ProgressLog(total_steps=10, done_steps=6, every=0.0, out=io.StringIO(), clock=lambda: now[0])
    now[0] = 1.0
    assert log.step(4, 5, 1, 2, 1.0, 8.0).endswith("ETA 3s")  # 3 steps left at 1 step/s
