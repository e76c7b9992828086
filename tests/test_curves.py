"""`mouaadnet runs curves`: learning curves of training runs read back from a real MLflow store, side by side."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mouaadnet.training.curves import format_curves, load_curves, table_epochs


@pytest.fixture
def store(tmp_path, monkeypatch):
    """Two training runs in a sqlite MLflow store: a finished 12-epoch one and one still at epoch 7."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.create_experiment("curves")
    runs = {}
    for name, epochs, slope in (("shipped", 12, 0.01), ("candidate", 7, 0.02)):
        run = client.create_run(experiment, run_name=name)
        for epoch in range(1, epochs + 1):
            client.log_metric(run.info.run_id, "val/street_person/AP75", slope * epoch, step=epoch)
            client.log_metric(run.info.run_id, "val/utkface/age_mae", 10.0 - epoch * slope * 10, step=epoch)
        runs[name] = run.info.run_id
    return client, experiment, runs


def test_curves_put_runs_side_by_side_by_epoch_with_each_best(store):
    _, _, runs = store
    curves = load_curves(["shipped", runs["candidate"]], ["val/street_person/AP75", "val/utkface/age_mae"])
    assert [c.name for c in curves] == ["shipped", "candidate"]
    assert curves[1].values["val/street_person/AP75"][7] == pytest.approx(0.14)
    assert table_epochs(curves, every=5) == [5, 7, 10, 12]  # every 5th plus where each run is now

    table = format_curves(curves, "val/street_person/AP75", every=5).splitlines()
    assert table[0] == "val/street_person/AP75"
    row = {line.split()[0]: line.split()[1:] for line in table[2:]}
    assert row["5"] == ["0.0500", "0.1000"]
    assert row["10"] == ["0.1000", "-"]  # the candidate has not reached epoch 10
    assert row["best"] == ["0.1200", "@12", "0.1400", "@7"]
    # an error metric's best is its minimum, not its maximum
    mae_best = format_curves(curves, "val/utkface/age_mae").splitlines()[-1].split()
    assert mae_best == ["best", "8.8000", "@12", "8.6000", "@7"]


def test_curves_name_what_is_wrong(store):
    client, experiment, _ = store
    with pytest.raises(ValueError, match="no run has this id or name"):
        load_curves(["nosuchrun"], ["val/street_person/AP75"])
    with pytest.raises(ValueError, match="no such run"):
        load_curves(["0" * 32], ["val/street_person/AP75"])
    with pytest.raises(ValueError, match=r"'val/street/AP75': none of the runs logged it .*val/street_person/AP75"):
        load_curves(["shipped"], ["val/street/AP75"])
    client.create_run(experiment, run_name="shipped")
    with pytest.raises(ValueError, match="not unique"):
        load_curves(["shipped"], ["val/street_person/AP75"])


def test_runs_curves_cli_prints_the_table_and_writes_the_plot(store, tmp_path):
    from mouaadnet.cli.main import app

    _, _, runs = store
    plot = tmp_path / "curves.png"
    result = CliRunner().invoke(app, ["runs", "curves", "shipped", runs["candidate"], "--metric",
                                      "val/street_person/AP75", "--every", "4", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "shipped (" in result.output and "candidate (" in result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.output.splitlines() if line.strip()}
    assert rows["4"] == ["0.0400", "0.0800"] and rows["8"] == ["0.0800", "-"]
    assert plot.stat().st_size > 5000

    bad = CliRunner().invoke(app, ["runs", "curves", "shipped", "--metric", "val/nope/AP75", "--plot", str(plot)])
    message = " ".join(bad.output.replace("│", " ").split())  # the error box wraps lines
    assert bad.exit_code == 2 and "'val/nope/AP75': none of the runs logged it" in message
