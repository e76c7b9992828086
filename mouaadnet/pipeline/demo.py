"""`mouaadnet demo` (what `make run` calls): the whole system on the embedded default, end to end.

1. data: build the default dataset if missing and verify it against `data.dvc` (`python -m mouaadnet.pipeline.dvc_data ensure`);
2. pipeline: `mouaadnet pipeline run` (kfp.local) with short epochs -> MLflow runs, registry version, a new
   version in `triton_repo/`; its full log goes to `<pipeline root>/pipeline.log`, progress lines to the terminal;
3. serve: the real Triton server (`mouaadnet serve`) on free loopback ports;
4. detect: real photos through gRPC (`mouaadnet detect`): two that ship in pip packages (scikit-image's astronaut,
   matplotlib's Grace Hopper) and CC BY 4.0 scenes from examples/real, people found printed beside their boxes;
5. stop the server and print where to look: the MLflow UI on the run just made, and how to send your own photo.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mouaadnet.tracking import PROJECT_ROOT

PROGRESS = re.compile(r"Executing task|finished with status|^\s*epoch \d|gates (PASSED|FAILED)|^\s*\[(PASS|FAIL)|"
                      r"^pipeline |^  \S.*  |Pipeline .* finished|^\s*progress\s|^publish: |real_AP50 ")
LIVE = re.compile(r"^\s*progress\s")  # the train task's progress lines: one live line on a terminal
PARENT_RUN = re.compile(r"MLflow parent run\s+(\w+) \(\w+\) in experiment (.+) \(id (\w+|\?)\) at (\S+)$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
UI_PORT = 5000
# MLflow 3's UI opens an experiment in its GenAI view unless the address (or the browser's last choice) says otherwise
UI_MODE = "workflowType=machine_learning"


class Terminal:
    """Prints lines; on a terminal a *live* line (training progress) is overwritten by the next line instead of
    scrolling, so the screen shows one progress line that updates while a task runs."""

    def __init__(self, stream=None):
        self._stream = stream  # None: whatever sys.stdout is when a line is said
        self.live = False

    def say(self, message: str, live: bool = False) -> None:
        stream = self._stream or sys.stdout
        if self.live:
            stream.write("\r\x1b[K")  # clear the live line before writing over it
        self.live = live and stream.isatty()
        stream.write(message if self.live else message + "\n")
        stream.flush()


_terminal = Terminal()


def _say(message: str, live: bool = False) -> None:
    _terminal.say(message, live)


def _elapsed(start: float) -> str:
    return f"{time.monotonic() - start:6.0f} s"


def run_pipeline_streamed(args: list[str], log_path: Path, cmd: list[str] | None = None) -> tuple[int, dict[str, str]]:
    """`mouaadnet pipeline run ARGS` (or ``cmd``) in a child process: everything to log_path, progress lines to
    stdout as they come (the child and its tasks run unbuffered). Returns the exit code and the MLflow parent run
    it reported ({"run_id", "experiment", "experiment_id", "tracking_uri"}, empty when none)."""
    cmd = cmd or [sys.executable, "-m", "mouaadnet.cli", "pipeline", "run", *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    parent: dict[str, str] = {}
    with open(log_path, "w") as log, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      text=True, bufsize=1, cwd=PROJECT_ROOT, env=env) as proc:
        for line in proc.stdout:
            log.write(line)
            log.flush()
            clean = ANSI.sub("", line.rstrip())
            if match := PARENT_RUN.search(clean):
                parent = {"run_id": match[1], "experiment": match[2], "experiment_id": match[3],
                          "tracking_uri": match[4]}
            if PROGRESS.search(clean):
                _say("    " + clean.strip(), live=bool(LIVE.search(clean)))
        return proc.wait(), parent


def mlflow_ui_hint(parent: dict[str, str], port: int = UI_PORT) -> str:
    """The command that serves the MLflow UI for the run just made, and the address of that run in it."""
    uri = parent.get("tracking_uri") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"
    if uri.startswith(("http://", "https://")):  # a tracking server is its own UI
        command, base = "", uri.rstrip("/")
    else:
        command = (f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false .venv/bin/mlflow ui --backend-store-uri {uri} "
                   f"--host 127.0.0.1 --port {port}")
        base = f"http://127.0.0.1:{port}"
    run, experiment = parent.get("run_id"), parent.get("experiment_id", "?")
    page = (f"{base}/#/experiments/{experiment}/runs/{run}?{UI_MODE}" if run and experiment != "?"
            else f"{base}/#/runs/{run}" if run else f"{base}/#/experiments")
    return f"{command}\n                  then open {page}" if command else f"open {page}"


def photo_hint(repo: Path, grpc_port: int = 8001) -> str:
    """How to send your own photo to the server: start it (it stops when the demo ends), then detect."""
    return (f".venv/bin/mouaadnet serve --repo {repo}   (leave it running; then, in a second terminal:)\n"
            f"                  .venv/bin/mouaadnet detect YOUR_PHOTO.jpg --url 127.0.0.1:{grpc_port} "
            f"--draw YOUR_PHOTO_people.jpg")


def real_photos(count: int) -> list[tuple[str, bytes, list[dict] | None]]:
    """(name, image bytes, labelled people or None): the pip packages' portraits, then ``count`` CC BY 4.0 scenes
    of examples/real with their boxes (research-only data never enters the repository)."""
    import io

    from matplotlib import cbook
    from PIL import Image
    from skimage import data as skimage_data

    from mouaadnet.data.scene_readers import read_yolo

    astronaut = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(astronaut, format="PNG")
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        hopper = handle.read()
    photos: list[tuple[str, bytes, list[dict] | None]] = [("astronaut.png (scikit-image)", astronaut.getvalue(), None),
                                                          ("grace_hopper.jpg (matplotlib)", hopper, None)]
    samples = read_yolo(PROJECT_ROOT / "examples" / "real").samples
    step = max(1, len(samples) // max(count, 1))
    for sample in samples[::step][:count]:
        truth = [{"box": [float(v) for v in box], "gender": None, "age": None} for box in sample.boxes]
        photos.append((Path(sample.image_path).name, Path(sample.image_path).read_bytes(), truth))
    return photos


def format_comparison(name: str, found: list[dict], truth: list[dict]) -> list[str]:
    """One image: predicted people beside the labelled ones (matched at IoU >= 0.5)."""
    from mouaadnet.evaluation.evaluate import MATCH_IOU
    from mouaadnet.evaluation.metrics import box_iou

    iou = box_iou(np.array([t["box"] for t in truth], np.float32).reshape(-1, 4),
                  np.array([p["box"] for p in found], np.float32).reshape(-1, 4))
    matched = int((iou >= MATCH_IOU).any(axis=1).sum()) if iou.size else 0
    lines = [f"  {name}: found {len(found)}, labelled {len(truth)}, matched {matched}" if truth else
             f"  {name}: found {len(found)} (no labels)"]
    for i in range(max(len(found), len(truth))):
        left = right = ""
        if i < len(found):
            p = found[i]
            left = (f"{p['gender']:<6} age {p['age']:4.0f}  score {p['score']:.2f}  "
                    f"[{', '.join(f'{v:.0f}' for v in p['box'])}]")
        if i < len(truth):
            t = truth[i]
            right = f"{t['gender'] or '?':<6} age {t['age'] if t['age'] is not None else '?':>4}  " \
                    f"[{', '.join(f'{v:.0f}' for v in t['box'])}]"
        lines.append(f"    {left:<52} | {right}")
    return lines


def demo(config: Path | None = None, images: int = 4, threshold: float = 0.3, pipeline_root: Path | None = None,
         extra_args: list[str] | None = None) -> int:
    from mouaadnet.pipeline import dvc_data

    start = time.monotonic()
    root = Path(pipeline_root or PROJECT_ROOT / "runs" / "pipeline")
    repo = PROJECT_ROOT / "triton_repo"
    _say(f"[1/5] {_elapsed(start)}  data: build the default dataset if missing, verify it against data.dvc")
    fingerprint = dvc_data.ensure_data(PROJECT_ROOT)
    _say(f"      data.dvc pins {fingerprint}: verified")

    _say(f"[2/5] {_elapsed(start)}  pipeline: kfp.local (prepare_data -> train -> reparameterize -> qat -> "
         f"export_onnx -> evaluate -> publish); full log {root / 'pipeline.log'}")
    args = ["--config", str(config or PROJECT_ROOT / "configs" / "pipeline.yaml"), "--pipeline-root", str(root),
            "--triton-repo", str(repo), *(extra_args or [])]
    code, parent = run_pipeline_streamed(args, root / "pipeline.log")
    if code != 0:
        _say(f"pipeline FAILED (exit {code}); see {root / 'pipeline.log'}")
        return code
    from mouaadnet.serving.publish import numeric_versions

    version = max(numeric_versions(repo / "detector"), default=0)
    if not (repo / "detector" / str(version) / "model.onnx").is_file():
        _say("no model to serve: Triton's version 1 should link the shipped weights (mouaadnet ship); see the log")
        return 1

    from mouaadnet.serving.client import TritonDetector
    from mouaadnet.serving.server import TritonServer
    from mouaadnet.serving.triton_install import ServerConfig, free_port

    served = "the shipped weights" if version == 1 else "the champion the pipeline promoted"
    _say(f"[3/5] {_elapsed(start)}  serve: tritonserver on 127.0.0.1 (model repository {repo}, detector "
         f"version {version} = {served}); same as `mouaadnet serve`")
    log = root / "triton.log"
    cfg = ServerConfig(repo=repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    photos = real_photos(images)
    with TritonServer(cfg, log_path=log) as server:
        _say(f"[4/5] {_elapsed(start)}  detect: {len(photos)} real photos through gRPC {server.grpc_url} "
             f"(same as `mouaadnet detect --url {server.grpc_url} examples/real/images/...`)")
        detector = TritonDetector(server.grpc_url)
        found = detector.detect([blob for _, blob, _ in photos], threshold)
        for (name, _, truth), people in zip(photos, found):
            for line in format_comparison(name, people, truth or []):
                _say(line)
        _say(f"[5/5] {_elapsed(start)}  stop the server")
    _say(f"done in {_elapsed(start).strip()}. Where to look:\n"
         f"  MLflow UI       {mlflow_ui_hint(parent)}\n"
         f"                  (experiment {parent.get('experiment', 'mouaadnet-pipeline')}: the pipeline run and a "
         f"child run per step; registry model mouaadnet-detector)\n"
         f"  your own photo  {photo_hint(repo)}\n"
         f"  compare runs    .venv/bin/mouaadnet runs compare\n"
         f"  Triton repo     {repo} (detector version {version}, sidecar model.onnx.json with sha256)\n"
         f"  artifacts       {root} (one folder per pipeline run and task; pipeline.log, triton.log)")
    return 0
