import math

import pytest
import torch

from mouaadnet.data.assembly import load_training_data
from mouaadnet.data.config import SourceConfig
from mouaadnet.training.checkpoint import CheckpointError, atomic_save, load_checkpoint
from mouaadnet.training.config import TrainConfig, flatten
from mouaadnet.training.recipe import step_modes
from mouaadnet.training.trainer import Trainer, train


def tiny_config(**optim) -> TrainConfig:
    """A config small enough for a few seconds of CPU: 64-px scenes, 32-px crops, 3 steps an epoch."""
    cfg = TrainConfig()
    cfg.model.scene_size = 64
    cfg.model.crop_size = 32
    cfg.data.scene = [SourceConfig(path="synthetic:24:0", val="synthetic:4:99", max_val=4)]
    cfg.data.crop = [SourceConfig(path="synthetic-crops:24:1", val="synthetic-crops:4:98", max_val=4)]
    cfg.data.scene_batch_size = 4
    cfg.data.crop_batch_size = 4
    cfg.optim.epochs = optim.get("epochs", 2)
    cfg.optim.steps_per_epoch = optim.get("steps", 3)
    cfg.experiment = "tests"
    cfg.threads = 1  # "auto" follows the load average: a resumed run could use another thread count (other kernels)
    return cfg


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts of the sqlite store land under ./mlruns here
    return uri


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def test_step_modes_spread_crop_batches_evenly():
    assert step_modes(4, 0.5, True, True) == ["scene", "crop", "scene", "crop"]
    assert step_modes(8, 0.25, True, True).count("crop") == 2
    assert step_modes(3, 0.5, False, True) == ["crop"] * 3
    assert step_modes(3, 0.5, True, False) == ["scene"] * 3


def test_resume_after_a_kill_continues_exactly(tmp_path, tracking, monkeypatch):
    cfg = tiny_config(epochs=2, steps=3)
    data = load_training_data(cfg.data, cfg.seed)
    train(cfg, tmp_path / "straight", progress=False, data=data)
    original = Trainer.validate

    def killed_in_second_epoch(self):
        if self.epoch == 1:
            raise KeyboardInterrupt  # as if Ctrl-C / SIGTERM arrived before epoch 2 was saved
        return original(self)

    monkeypatch.setattr(Trainer, "validate", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", progress=False, data=data)
    monkeypatch.setattr(Trainer, "validate", original)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 0
    train(cfg, tmp_path / "resumed", resume=True, progress=False, data=data)
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert straight["epoch"] == resumed["epoch"] == 1
    for part in ("model", "ema"):
        for name, value in straight[part].items():
            assert torch.allclose(value.float(), resumed[part][name].float(), atol=1e-6), f"{part}.{name}"
    assert straight["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()


def test_atomic_save_keeps_previous_checkpoint_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.ones(3)}, "epoch": 1}, path)

    def broken_save(obj, handle):
        handle.write(b"partial bytes")
        raise OSError("disk full (injected)")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="injected"):
        atomic_save({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_corrupt_checkpoint_is_rejected_with_its_path(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_pretrained_checkpoint_of_another_architecture_is_named(tmp_path):
    """Fine-tuning the shipped v2 weights from a config that still says v1 fails naming the keys to set."""
    from model import ModelConfig, build_model

    v2 = ModelConfig(arch="v2", widths=[8, 16, 24, 32, 48], neck_width=16, head_width=16, scene_size=64, crop_size=32)
    start = tmp_path / "v2.pt"
    torch.save({"model": build_model(v2).state_dict(), "model_config": v2.model_dump()}, start)
    cfg = tiny_config()
    cfg.pretrained = str(start)
    with pytest.raises(ValueError, match=r"v2.pt does not fit.*model.arch: checkpoint v2, config v1.*model.widths"):
        Trainer(cfg, tmp_path / "run")



def test_a_converged_v2_fine_tunes_with_the_iou_branch_added(tmp_path, capsys):
    """The trainer starts a config that adds the IoU branch from a v2 checkpoint without it and says which tensors
    start fresh."""
    from model import ModelConfig, build_model

    v2 = ModelConfig(arch="v2", widths=[8, 16, 24, 32, 48], neck_width=16, head_width=16, scene_size=64, crop_size=32)
    start = tmp_path / "v2.pt"
    saved = build_model(v2).state_dict()
    torch.save({"model": saved, "model_config": v2.model_dump()}, start)
    cfg = tiny_config()
    cfg.model = v2.model_copy(update={"iou_score": 0.5})
    cfg.pretrained = str(start)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert "2 tensors new in this config" in capsys.readouterr().err
    torch.testing.assert_close(trainer.model.state_dict()["detection.ltrb.weight"], saved["detection.ltrb.weight"])
    assert "detection.iou.weight" in trainer.model.state_dict()


def test_a_v2_teacher_distils_into_the_scene_steps(tmp_path):
    """With a detector teacher the scene steps carry the two teacher terms (and the crop steps none); a v1
    teacher is refused by name."""
    from model import ModelConfig, build_model

    v2 = ModelConfig(arch="v2", widths=[8, 16, 24, 32, 48], neck_width=16, head_width=16, scene_size=64, crop_size=32)
    teacher = tmp_path / "teacher.pt"
    torch.save({"model": build_model(v2).state_dict(), "model_config": v2.model_dump()}, teacher)
    settings = tiny_config().model_dump()
    settings["model"] = v2.model_dump()
    settings["loss"].update(teacher_heatmap=1.0, teacher_box=2.5)
    cfg = TrainConfig.model_validate({**settings, "detector_teacher": str(teacher)})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    scene = trainer.optimizer_step(next(trainer.streams["scene"].epoch(0, 1)), "scene")
    crop = trainer.optimizer_step(next(trainer.streams["crop"].epoch(0, 1)), "crop")
    assert scene["loss_scene_teacher_heatmap"] > 0 and scene["loss_scene_teacher_box"] >= 0
    assert not any("teacher" in key for key in crop)

    v1 = v2.model_copy(update={"arch": "v1"})
    torch.save({"model": build_model(v1).state_dict(), "model_config": v1.model_dump()}, teacher)
    with pytest.raises(ValueError, match="distillation needs a v2"):
        Trainer(cfg, tmp_path / "run2", progress=False)


def test_mlflow_run_has_params_metrics_artifacts(tmp_path, tracking):
    cfg = tiny_config(epochs=2, steps=2)
    summary = train(cfg, tmp_path / "run", progress=False)
    run = _client(tracking).get_run(summary.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == str(cfg.optim.lr)
    assert run.data.params["data.scene.0.path"] == "synthetic:24:0"
    for key in ("loss", "loss_scene_heatmap", "loss_scene_box", "loss_crop_gender", "lr", "images_per_second",
                "val/score", "val/synthetic/AP50", "val/synthetic-crops/age_mae"):
        assert key in run.data.metrics, key
    history = _client(tracking).get_metric_history(summary.run_id, "loss")
    assert [m.step for m in history] == [1, 2]
    assert len(run.data.tags["git_commit"]) > 0 and len(run.data.tags["data_fingerprint"]) == 16
    artifacts = {a.path for a in _client(tracking).list_artifacts(summary.run_id)}
    assert {"config.yaml", "checkpoints", "plots"} <= artifacts
    plots = {a.path for a in _client(tracking).list_artifacts(summary.run_id, "plots")}
    assert "plots/training_curves.png" in plots and "plots/synthetic_pr_curve.png" in plots
    assert "plots/synthetic-crops_gender_confusion.png" in plots and "plots/synthetic-crops_age_errors.png" in plots


@pytest.mark.parametrize("error,status", [(RuntimeError("injected"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_failure_mid_run_leaves_run_failed_or_killed(tmp_path, tracking, monkeypatch, error, status):
    cfg = tiny_config(epochs=2, steps=2)
    calls = {"n": 0}
    original = Trainer.validate

    def validate_then_fail(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise error
        return original(self)

    monkeypatch.setattr(Trainer, "validate", validate_then_fail)
    with pytest.raises(type(error)):
        train(cfg, tmp_path / "run", progress=False)
    runs = _client(tracking).search_runs([_client(tracking).get_experiment_by_name("tests").experiment_id])
    assert [r.info.status for r in runs] == [status]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 0  # the finished epoch is kept


def test_history_stays_aligned_when_a_metric_appears_late():
    from mouaadnet.training.trainer import append_history

    history: dict[str, list[float]] = {}
    append_history(history, {"loss": 3.0}, 1)
    append_history(history, {"loss": 2.0, "val/x/gender_accuracy": 0.9}, 2)
    append_history(history, {"loss": 1.0}, 3)
    assert history["epoch"] == [1, 2, 3]
    assert history["loss"] == [3.0, 2.0, 1.0]
    acc = history["val/x/gender_accuracy"]
    assert len(acc) == 3 and math.isnan(acc[0]) and acc[1] == 0.9 and math.isnan(acc[2])


def test_flatten_config_for_mlflow():
    flat = flatten(tiny_config().model_dump())
    assert flat["model.scene_size"] == 64 and flat["data.crop.0.path"] == "synthetic-crops:24:1"
    assert not any(isinstance(v, dict) for v in flat.values())


def test_sgd_and_cosine_schedule_train(tmp_path, tracking):
    cfg = tiny_config(epochs=1, steps=2)
    cfg.optim.optimizer = "sgd"
    cfg.optim.scheduler = "cosine"
    cfg.optim.ema = False
    summary = train(cfg, tmp_path / "run", progress=False)
    assert math.isfinite(summary.last_metrics["loss"])


def test_resume_on_another_machine_starts_a_new_run_with_the_history(tmp_path, monkeypatch):
    """A committed last.pt resumed where its MLflow store does not exist: no crash, a new run that carries the
    epochs done before (so the curves are whole) and names the run it continues."""
    cfg = tiny_config(epochs=2, steps=2)
    data = load_training_data(cfg.data, cfg.seed)
    first = f"sqlite:///{tmp_path / 'machine_a.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", first)
    original = Trainer.validate

    def killed_in_second_epoch(self):
        if self.epoch == 1:
            raise KeyboardInterrupt  # the session ended during epoch 2
        return original(self)

    monkeypatch.setattr(Trainer, "validate", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", progress=False, data=data)
    monkeypatch.setattr(Trainer, "validate", original)
    old = load_checkpoint(tmp_path / "run" / "last.pt")["mlflow_run_id"]
    second = f"sqlite:///{tmp_path / 'machine_b.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", second)
    summary = train(cfg, tmp_path / "run", resume=True, progress=False, data=data)
    run = _client(second).get_run(summary.run_id)
    assert summary.run_id != old and run.data.tags["resumed_from_run"] == old
    steps = [m.step for m in _client(second).get_metric_history(summary.run_id, "loss")]
    assert steps == [1, 2]  # epoch 1 from the checkpoint's history, epoch 2 trained here
