"""`mouaadnet demo` (make run): live progress through a pipe, and the hints it ends with."""

from __future__ import annotations

import io
import sys
import time

from mouaadnet.kubeflow.runner import format_result
from mouaadnet.pipeline import demo


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_lines_overwrite_each_other_on_a_terminal_only():
    tty = demo.Terminal(_Tty())
    for line, live in (("Executing task train", False), ("progress 1", True), ("progress 2", True), ("epoch 1", False)):
        tty.say(line, live)
    assert tty._stream.getvalue() == "Executing task train\nprogress 1\r\x1b[Kprogress 2\r\x1b[Kepoch 1\n"
    pipe = demo.Terminal(io.StringIO())
    pipe.say("progress 1", live=True)
    pipe.say("progress 2", live=True)
    assert pipe._stream.getvalue() == "progress 1\nprogress 2\n"


def test_child_lines_arrive_while_it_runs(tmp_path, monkeypatch):
    """The child prints without flushing, then works on: its progress line must show before it ends."""
    said = []
    monkeypatch.setattr(demo, "_say", lambda message, live=False: said.append((time.monotonic(), message, live)))
    script = "import time; print('progress  epoch 1/1  step 1/9  loss 1.0  9.0 img/s  ETA 8s'); time.sleep(2)"
    code, parent = demo.run_pipeline_streamed([], tmp_path / "log.txt", cmd=[sys.executable, "-c", script])
    ended = time.monotonic()
    assert code == 0 and parent == {}
    assert said and said[0][1].strip().startswith("progress") and said[0][2] is True
    assert ended - said[0][0] > 1.0, "the line came only when the child ended"
    assert "progress" in (tmp_path / "log.txt").read_text()


def test_the_parent_run_is_read_from_the_pipeline_result_and_hinted(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    text = format_result({"state": "SUCCEEDED", "parent_run_id": "0a1b2c", "status": "FINISHED", "experiment": "demo test",
                          "experiment_id": "7", "tracking_uri": uri, "pipeline_root": "runs/pipeline"})
    script = f"print({text!r})"
    code, parent = demo.run_pipeline_streamed([], tmp_path / "log.txt", cmd=[sys.executable, "-c", script])
    assert parent == {"run_id": "0a1b2c", "experiment": "demo test", "experiment_id": "7", "tracking_uri": uri}
    hint = demo.mlflow_ui_hint(parent)
    assert f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000" in hint
    # opened in the UI's model-training view, not its GenAI one
    assert hint.endswith("then open http://127.0.0.1:5000/#/experiments/7/runs/0a1b2c?workflowType=machine_learning")
    server = demo.mlflow_ui_hint({**parent, "tracking_uri": "http://mlflow:5000/"})
    assert server == "open http://mlflow:5000/#/experiments/7/runs/0a1b2c?workflowType=machine_learning"


def test_photo_hint_starts_the_server_then_detects(tmp_path):
    hint = demo.photo_hint(tmp_path / "triton_repo")
    assert f"mouaadnet serve --repo {tmp_path / 'triton_repo'}" in hint
    assert "mouaadnet detect YOUR_PHOTO.jpg --url 127.0.0.1:8001" in hint


def test_the_demo_sends_real_photos_with_their_boxes():
    from PIL import Image

    photos = demo.real_photos(3)
    names = [name for name, _, _ in photos]
    assert names[:2] == ["astronaut.png (scikit-image)", "grace_hopper.jpg (matplotlib)"] and len(photos) == 5
    for name, blob, _ in photos:
        assert Image.open(io.BytesIO(blob)).size[0] > 100, name
    assert all(truth and all(len(p["box"]) == 4 for p in truth) for _, _, truth in photos[2:])
    assert photos[0][2] is None
