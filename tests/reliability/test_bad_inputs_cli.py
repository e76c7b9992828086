"""Bad input to the command line, the data readers and the model loaders: one clear line naming the problem,
a non-zero exit, never a Python traceback, and nothing loaded or run that should not be."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from mouaadnet.cli.main import app

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]

runner = CliRunner()


def _tiny_config(path, **optim):
    cfg = {"experiment": "rel-cli", "model": {"scene_size": 64, "crop_size": 32},
           "data": {"scene": [{"path": "synthetic:8:0", "val": "synthetic:2:9"}], "scene_batch_size": 2},
           "optim": {"epochs": 1, "steps_per_epoch": 1, **optim}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(args):
    result = runner.invoke(app, [str(a) for a in args])
    traceback = result.exception is not None and not isinstance(result.exception, SystemExit)
    return result.exit_code, result.output, traceback


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("badcli")
    f = {"root": root}
    f["good_cfg"] = _tiny_config(root / "good.yaml")
    f["malformed"] = root / "malformed.yaml"
    f["malformed"].write_text("optim: {epochs: 3\n  lr: [\n")
    f["unknown"] = root / "unknown.yaml"
    f["unknown"].write_text("optim:\n  learning_rate: 0.1\n")
    f["wrongtype"] = root / "wrongtype.yaml"
    f["wrongtype"].write_text("optim:\n  epochs: ten\n")
    f["nan_lr"] = _tiny_config(root / "nan_lr.yaml")
    f["nan_lr"].write_text(f["nan_lr"].read_text().replace("epochs: 1", "epochs: 1\n  lr: .nan"))
    f["inf_lr"] = root / "inf_lr.yaml"
    f["inf_lr"].write_text(f["good_cfg"].read_text().replace("epochs: 1", "epochs: 1\n  lr: .inf"))
    f["neg_lr"] = root / "neg_lr.yaml"
    f["neg_lr"].write_text(f["good_cfg"].read_text().replace("epochs: 1", "epochs: 1\n  lr: -0.01"))
    f["list_cfg"] = root / "list.yaml"
    f["list_cfg"].write_text("- just\n- a list\n")
    # checkpoints
    from model import ModelConfig, build_model

    f["pickle"] = root / "list.pt"
    f["pickle"].write_bytes(pickle.dumps([1, 2, 3]))
    other = build_model(ModelConfig(widths=[8, 16, 24, 32, 48], neck_width=32, head_width=32))
    f["other_arch"] = root / "other.pt"
    torch.save({"model": other.state_dict()}, f["other_arch"])  # no model_config: read as the default one
    f["truncated"] = root / "truncated.pt"
    torch.save({"model": build_model(ModelConfig()).state_dict()}, f["truncated"])
    f["truncated"].write_bytes(f["truncated"].read_bytes()[:5000])
    f["evil"] = root / "evil.pt"
    f["evil_marker"] = root / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {f['evil_marker']}",))

    torch.save({"model": Evil()}, f["evil"])
    f["onnx_truncated"] = root / "trunc.onnx"
    from mouaadnet.export.standin import export_standin_onnx

    good_onnx = export_standin_onnx(root / "good" / "model.onnx", seed=0)
    f["onnx_truncated"].write_bytes(good_onnx.read_bytes()[:3000])
    f["good_onnx"] = good_onnx
    f["photo"] = root / "photo.jpg"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(f["photo"])
    f["notes"] = root / "notes.jpg"
    f["notes"].write_text("not a picture")
    f["a_file"] = root / "plain.txt"
    f["a_file"].write_text("hello")
    return f


def _cases(f):
    """(name, argv, expected exit code, substring the output must contain, what was done)."""
    ck = f["root"] / "none.pt"
    return [
        ("train: config file missing", ["train", "--config", f["root"] / "nope.yaml"], 2, "not found",
         "--config of a missing file"),
        ("train: malformed YAML", ["train", "--config", f["malformed"]], 2, "not valid YAML", "unclosed YAML"),
        ("train: config is a list", ["train", "--config", f["list_cfg"]], 2, "expected a mapping", "a YAML list"),
        ("train: unknown key", ["train", "--config", f["unknown"]], 2, "unknown key 'optim.learning_rate'",
         "optim.learning_rate"),
        ("train: wrong type", ["train", "--config", f["wrongtype"]], 2, "key 'optim.epochs'", "epochs: ten"),
        ("train: lr .nan", ["train", "--config", f["nan_lr"]], 2, "key 'optim.lr'", "lr: .nan"),
        ("train: lr .inf", ["train", "--config", f["inf_lr"]], 2, "key 'optim.lr'", "lr: .inf"),
        ("train: negative lr", ["train", "--config", f["neg_lr"]], 2, "key 'optim.lr'", "lr: -0.01"),
        ("train: --data nosuch:dir", ["train", "--config", f["good_cfg"], "--data", "nosuch:dir", "--out",
                                      f["root"] / "o1"], 2, "nosuch:dir", "--data nosuch:dir"),
        ("train: --data synthetic:abc", ["train", "--config", f["good_cfg"], "--data", "synthetic:abc", "--out",
                                         f["root"] / "o2"], 2, "synthetic:N[:SEED]", "--data synthetic:abc"),
        ("train: --data synthetic:0", ["train", "--config", f["good_cfg"], "--data", "synthetic:0", "--out",
                                       f["root"] / "o3"], 2, "N >= 1", "--data synthetic:0"),
        ("train: --data a plain file", ["train", "--config", f["good_cfg"], "--data", f["a_file"], "--out",
                                        f["root"] / "o4"], 2, "does not exist or is not a directory",
         "--data pointing at a .txt file"),
        ("train: --epochs 0", ["train", "--config", f["good_cfg"], "--epochs", "0", "--out", f["root"] / "o5"], 2,
         "--epochs must be >= 1", "--epochs 0"),
        ("train: --resume with nothing to resume", ["train", "--config", f["good_cfg"], "--out", f["root"] / "o6",
                                                    "--resume", "--quiet"], 1, "no checkpoint to resume",
         "--resume on an empty folder"),
        ("evaluate: --data nosuch:dir", ["evaluate", f["other_arch"], "--data", "nosuch:dir"], 2, "nosuch:dir",
         "--data nosuch:dir"),
        ("evaluate: --data synthetic:abc", ["evaluate", f["other_arch"], "--data", "synthetic:abc"], 2,
         "synthetic:N[:SEED]", "--data synthetic:abc"),
        ("evaluate: --data synthetic:0", ["evaluate", f["other_arch"], "--data", "synthetic:0"], 2, "N >= 1",
         "--data synthetic:0 (used to exit 0 with NaN metrics)"),
        ("evaluate: --limit 0", ["evaluate", f["other_arch"], "--data", "synthetic:2", "--limit", "0"], 2,
         "--limit must be >= 1", "--limit 0"),
        ("evaluate: checkpoint missing", ["evaluate", ck, "--data", "synthetic:2"], 2, "not found",
         "a missing .pt"),
        ("loader: a pickle that is not a checkpoint", ["evaluate", f["pickle"], "--data", "synthetic:2"], 2,
         "list.pt", "pickle.dumps([1, 2, 3])"),
        ("loader: checkpoint of another architecture", ["evaluate", f["other_arch"], "--data", "synthetic:2"], 2,
         "does not match its model config", "state dict of a narrower network"),
        ("loader: truncated checkpoint", ["evaluate", f["truncated"], "--data", "synthetic:2"], 2,
         "corrupt, truncated or not a MouaadNet checkpoint", "first 5000 bytes of a checkpoint"),
        ("loader: checkpoint with pickled code", ["evaluate", f["evil"], "--data", "synthetic:2"], 2,
         "refusing checkpoint", "a .pt whose pickle calls os.system"),
        ("loader: export of a malicious checkpoint", ["export", f["evil"], "--out", f["root"] / "x.onnx"], 2,
         "refusing checkpoint", "mouaadnet export on the os.system pickle"),
        ("loader: truncated ONNX", ["detect", f["photo"], "--model", f["onnx_truncated"]], 1, "trunc.onnx",
         "detect --model with the first 3000 bytes of an ONNX"),
        ("detect: file that is not an image", ["detect", f["notes"], "--model", f["good_onnx"]], 1,
         "notes.jpg: not an image", "notes.jpg holding text"),
        ("detect: missing image", ["detect", f["root"] / "gone.jpg", "--model", f["good_onnx"]], 1,
         "no such file", "a path that does not exist"),
        ("data check: unknown source", ["data", "check", f["root"] / "nowhere"], 1, "nowhere",
         "data check of a missing folder"),
    ]


def test_cli_bad_inputs_give_one_clear_line(files, tmp_path, monkeypatch, scoreboard):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    problems = []
    for name, argv, code, expected, done in _cases(files):
        exit_code, output, traceback = _run(argv)
        ok = exit_code == code and expected in output and not traceback and "Traceback" not in output
        if "pickled code" in name or "malicious" in name:
            advice = "weights_only` set to `False" in output or "weights_only=False" in output
            side_effect = files["evil_marker"].exists()
            ok = ok and not advice and not side_effect
            output += f" [torch's weights_only=False advice shown: {advice}; pickled code ran: {side_effect}]"
        first = next((line for line in output.splitlines() if expected in line), output.strip()[:200])
        scoreboard.record("bad-input", f"cli: {name}", done=done,
                          observed=f"exit {exit_code}: {first}" + (" (TRACEBACK)" if traceback else ""),
                          ok=ok, bad_inputs=1)
        if not ok:
            problems.append(f"{name}: exit {exit_code}, traceback {traceback}: {output[-600:]}")
    assert not problems, "\n".join(problems)


def _yolo(root, label_text, size=(80, 64)):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.full((size[1], size[0], 3), 100, np.uint8)).save(root / "images" / "a.jpg")
    (root / "labels" / "a.txt").write_text(label_text)
    return root


def _reader_cases(root):
    """(name, source path, substring the report must show, what was done)."""
    utk = root / "utk"
    utk.mkdir()
    Image.new("RGB", (8, 8)).save(utk / "25_0_1_20170116220224657.jpg.chip.jpg")
    Image.new("RGB", (8, 8)).save(utk / "abc_x_y_junk.jpg.chip.jpg")
    coco = root / "broken.json"
    coco.write_text('{"images": [ {"id": 1, ')
    peta = root / "peta"
    peta.mkdir()
    (peta / "labels.csv").write_text("file,gender\nimages/a.jpg,male\n")
    corrupt = _yolo(root / "corrupt", "0 0.5 0.5 0.2 0.2\n")
    (corrupt / "images" / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return [
        ("YOLO: non-numeric label line", _yolo(root / "nonnum", "0 0.5 0.5 0.2 0.2\n0 half 0.5 0.2 0.2\n"),
         "a.txt:2", "label line '0 half 0.5 0.2 0.2'"),
        ("YOLO: wrong field count", _yolo(root / "fields", "0 0.5 0.5\n"), "a.txt:1", "label line '0 0.5 0.5'"),
        ("YOLO: box outside the image", _yolo(root / "outside", "0 1.5 1.5 0.2 0.2\n"), "a.txt:1",
         "box centred at (1.5, 1.5)"),
        ("YOLO: zero-area box", _yolo(root / "zero", "0 0.5 0.5 0 0\n"), "a.txt:1", "box of width and height 0"),
        ("YOLO: unreadable image", corrupt, "a.jpg", "a JPEG of 15 garbage bytes"),
        ("UTKFace: junk file name", utk, "abc_x_y_junk", "abc_x_y_junk.jpg.chip.jpg"),
        ("COCO: malformed JSON", coco, "broken.json", "annotations cut mid-object"),
        ("PETA: missing columns", peta, "missing required columns", "labels.csv with file,gender only"),
    ]


def test_data_readers_report_bad_records_by_file_and_line(tmp_path, scoreboard):
    problems = []
    for name, source, expected, done in _reader_cases(tmp_path):
        exit_code, output, traceback = _run(["data", "check", source])
        ok = exit_code == 1 and expected in output and not traceback
        line = next((ln.strip() for ln in output.splitlines() if expected in ln), output.strip()[:200])
        scoreboard.record("bad-input", f"data: {name}", done=f"mouaadnet data check on {done}",
                          observed=f"exit {exit_code}: {line}", ok=ok, bad_inputs=1)
        if not ok:
            problems.append(f"{name}: exit {exit_code}: {output[-500:]}")
    assert not problems, "\n".join(problems)


def test_publish_refuses_traversal_and_tampered_artifacts(tmp_path, scoreboard):
    from _serving_utils import copy_repo, tiny_onnx

    from model.artifacts import write_sidecar

    repo = copy_repo(tmp_path / "repo")
    artifact = tiny_onnx(tmp_path / "art" / "model.onnx")
    write_sidecar(artifact, "fp32")
    tampered = tiny_onnx(tmp_path / "tam" / "model.onnx")
    write_sidecar(tampered, "fp32")
    with open(tampered, "ab") as handle:
        handle.write(b"\0")
    outside = tmp_path / "outside"
    (outside / "configs").mkdir(parents=True)
    (outside / "config.pbtxt").write_text((repo / "detector" / "config.pbtxt").read_text())
    cases = [
        ("model name ../outside", ["publish", artifact, "--repo", repo, "--model", "../outside"], "invalid model name"),
        ("absolute model name", ["publish", artifact, "--repo", repo, "--model", str(outside)], "invalid model name"),
        ("model name with a slash", ["publish", artifact, "--repo", repo, "--model", "detector/../../outside"],
         "invalid model name"),
        ("artifact whose sha256 differs from its sidecar", ["publish", tampered, "--repo", repo],
         "does not match"),
    ]
    problems = []
    for name, argv, expected in cases:
        exit_code, output, traceback = _run(argv)
        nothing = not any(p.name.isdigit() for p in outside.iterdir()) and \
            [p.name for p in (repo / "detector").iterdir() if p.name.isdigit()] == ["1"]
        ok = exit_code == 1 and expected in output and not traceback and nothing
        scoreboard.record("security" if "name" in name else "bad-input", f"publish: {name}",
                          done=f"mouaadnet {' '.join(str(a).replace(str(tmp_path), '$TMP') for a in argv)}",
                          observed=f"exit {exit_code}: {output.strip().splitlines()[0] if output.strip() else ''}; "
                                   f"nothing written outside the repository or as a new version: {nothing}",
                          ok=ok, bad_inputs=1)
        if not ok:
            problems.append(f"{name}: {exit_code} {output}")
    assert not problems, problems
    assert json.loads((artifact.with_name("model.onnx.json")).read_text())["sha256"]


def test_detect_on_a_folder(tmp_path, scoreboard):
    """`mouaadnet detect DIR`: what a user means is every image in it (as for several files); a folder without
    images is one clear line. Subfolders and other files are left out and the count says so."""
    from _serving_utils import tiny_onnx

    onnx = tiny_onnx(tmp_path / "model.onnx")
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for name in ("b.jpg", "a.PNG"):
        Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(photos / name)
    (photos / "notes.txt").write_text("not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("nothing")
    cases = [("detect: a folder of images", photos, 0, "a.PNG"), ("detect: a folder with no images", empty, 1,
                                                                    "a folder with no image files")]
    problems = []
    for name, folder, code, expected in cases:
        exit_code, output, traceback = _run(["detect", folder, "--model", onnx, "--json"])
        ok = exit_code == code and expected in output and not traceback
        if code == 0:
            lines = output.splitlines()
            found = [row["image"] for row in json.loads("\n".join(lines[lines.index("["):]))]
            ok = ok and [os.path.basename(f) for f in found] == ["a.PNG", "b.jpg"] and "1 other file(s) skipped" in output
            observed = f"exit {exit_code}: {len(found)} images detected ({', '.join(os.path.basename(f) for f in found)}); " \
                       + next(ln for ln in output.splitlines() if "image(s)" in ln)
        else:
            observed = f"exit {exit_code}: " + next((ln for ln in output.splitlines() if expected in ln), output[-200:])
        scoreboard.record("bad-input", f"cli: {name}", done=f"mouaadnet detect {folder.name}/ --model model.onnx",
                          observed=observed, ok=ok, bad_inputs=1)
        if not ok:
            problems.append(f"{name}: exit {exit_code}: {output[-600:]}")
    assert not problems, problems
