"""Training throughput when the 2 cores are shared: OpenMP wait policy and thread count, quiet vs under load.

Each setting runs in its own process (OpenMP reads OMP_WAIT_POLICY once, when torch loads it). The load is a
second torch process with the default (spinning) policy doing convolutions on 2 threads — what a test suite or a
pipeline task beside training looks like to the scheduler.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

SETTINGS = (("2 threads, OMP_WAIT_POLICY=ACTIVE", 2, "ACTIVE"), ("2 threads, OMP_WAIT_POLICY=PASSIVE", 2, "PASSIVE"),
            ("1 thread, OMP_WAIT_POLICY=PASSIVE", 1, "PASSIVE"))

_MEASURE = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from mouaadnet.training.throughput import run_train_bench
rows = run_train_bench(int(sys.argv[2]), int(sys.argv[3]), batch=int(sys.argv[4]), crop_batch=64,
                       variants=(("bf16 channels_last", "bf16", True),))
print(json.dumps([r for r in rows if r["mode"] == "scene"][0]["images_per_second"]))
"""

_LOAD = """
import time, torch
torch.set_num_threads(2)
x, w = torch.randn(8, 32, 128, 128), torch.randn(32, 32, 3, 3)
end = time.time() + float(__import__("sys").argv[1])
while time.time() < end:
    torch.nn.functional.conv2d(x, w, padding=1)
"""


def _images_per_second(threads: int, policy: str, steps: int, size: int, batch: int) -> float:
    env = {**os.environ, "OMP_WAIT_POLICY": policy, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(threads), str(steps), str(size), str(batch)],
                          env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"throughput child failed: {done.stderr[-1500:]}")
    return float(done.stdout.strip().splitlines()[-1])


def run_contention_bench(steps: int = 20, size: int = 256, batch: int = 8, load_seconds: float = 900) -> list[dict]:
    """Rows {setting, quiet, loaded} in scene images/s (full train steps)."""
    rows = []
    for name, threads, policy in SETTINGS:
        quiet = _images_per_second(threads, policy, steps, size, batch)
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # the load spins, as foreign torch does
        load = subprocess.Popen([sys.executable, "-c", _LOAD, str(load_seconds)], env=env)
        try:
            time.sleep(3)  # let the load reach its steady state
            loaded = _images_per_second(threads, policy, steps, size, batch)
        finally:
            load.kill()
            load.wait()
        rows.append({"setting": name, "quiet": quiet, "loaded": loaded})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| setting | quiet (img/s) | beside a 2-thread torch load (img/s) | loaded / quiet |", "|---|---:|---:|---:|"]
    lines += [f"| {r['setting']} | {r['quiet']:.1f} | {r['loaded']:.1f} | {r['loaded'] / r['quiet']:.2f} |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(run_contention_bench(), indent=2))
