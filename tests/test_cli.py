import json

from typer.testing import CliRunner

from mouaadnet.cli.main import app

runner = CliRunner()


def test_info_json_reports_sizes_flops_and_outputs():
    result = runner.invoke(app, ["info", "--size", "320", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert 0 < summary["params_deploy"] < summary["params_train"]
    assert 0 < summary["flops_deploy_scene"]
    assert summary["outputs_scene"]["age"] == [1, 101, 40, 40]
    assert summary["outputs_crop"]["gender"] == [1]


def test_info_flops_scale_with_input_size():
    small = json.loads(runner.invoke(app, ["info", "--size", "160", "--json"]).output)
    large = json.loads(runner.invoke(app, ["info", "--size", "320", "--json"]).output)
    assert 3.5 < large["flops_deploy_scene"] / small["flops_deploy_scene"] < 4.5


def test_info_table_and_bad_config(tmp_path):
    assert "deploy form" in runner.invoke(app, ["info"]).output
    bad = tmp_path / "bad.yaml"
    bad.write_text("colour: red\n")
    result = runner.invoke(app, ["info", "--config", str(bad)])
    assert result.exit_code == 2
    assert "unknown key 'colour'" in result.output


def test_boolean_flags_render_as_flags_in_help():
    """Typer's rich help would print `--json <bool>`; a flag takes no value."""
    result = CliRunner().invoke(app, ["info", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    assert "--json" in result.output and "<bool>" not in result.output
    assert "<path>" in result.output  # options that take a value keep their type
    train = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "120"})
    assert "--resume" in train.output and "<bool>" not in train.output
