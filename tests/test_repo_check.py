"""`mouaadnet repo check`: parse every config.pbtxt, check against ONNX files and the ensemble wiring."""

from __future__ import annotations

import shutil

import pytest
from _serving_utils import REPO_SRC, copy_repo, tiny_onnx
from onnx import TensorProto
from typer.testing import CliRunner

from mouaadnet.cli.main import app
from mouaadnet.serving.repo_check import check_repo, load_config, parse_pbtxt


@pytest.fixture
def repo(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    tiny_onnx(repo / "detector" / "1" / "model.onnx")
    return repo


def edit(path, old, new):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("use_protobuf", [True, False])
def test_shipped_repository_is_valid(repo, use_protobuf):
    report = check_repo(repo, use_protobuf=use_protobuf)
    assert report.ok, report.errors
    assert report.models == ["detector", "mouaadnet", "postprocess", "preprocess"]


def test_tracked_repository_is_valid_without_binaries():
    report = check_repo(REPO_SRC)
    assert report.ok, report.errors


@pytest.mark.parametrize("name", ["mouaadnet", "preprocess", "postprocess", "detector"])
def test_fallback_parser_agrees_with_protobuf(name):
    path = REPO_SRC / name / "config.pbtxt"
    a, b = load_config(path, use_protobuf=True), load_config(path, use_protobuf=False)
    for key in ("name", "max_batch_size", "input", "output", "steps", "parameters"):
        assert a.get(key) == b.get(key), key


def test_fallback_parser_handles_syntax():
    cfg = parse_pbtxt('name: "x"  # comment\nmax_batch_size: 4\ninput [ { name: "a", dims: [ 1, -1 ] } ]\n'
                      'parameters { key: "k" value: { string_value: "v" } }\ninstance_group { count: 2 }')
    assert cfg["input"] == [{"name": "a", "dims": [1, -1]}] and cfg["parameters"]["k"] == {"string_value": "v"}
    with pytest.raises(ValueError):
        parse_pbtxt('input [ { name: "a" ')


@pytest.mark.parametrize("use_protobuf", [True, False])
def test_catches_wrong_dim(repo, use_protobuf):
    edit(repo / "detector" / "config.pbtxt", "dims: [ 100, 4 ]", "dims: [ 100, 5 ]")
    errors = check_repo(repo, use_protobuf=use_protobuf).errors
    assert any("output 'boxes' dims [-1, 100, 5]" in e and "model.onnx" in e for e in errors), errors
    assert any("configs/" in e and "differ" in e for e in errors), errors
    assert any("step 2" in e and "'boxes'" in e and "dims" in e for e in errors), errors  # postprocess expects [100,4]


def test_catches_wrong_dtype(repo):
    tiny_onnx(repo / "detector" / "1" / "model.onnx", input_type=TensorProto.FLOAT16)
    errors = check_repo(repo).errors
    assert any("input 'images' data_type TYPE_FP32" in e and "TYPE_FP16" in e for e in errors), errors


def test_catches_wrong_dtype_in_ensemble(repo):
    edit(repo / "preprocess" / "config.pbtxt", "data_type: TYPE_STRING", "data_type: TYPE_UINT8")
    errors = check_repo(repo).errors
    assert any("step 0 (preprocess)" in e and "TYPE_UINT8" in e and "TYPE_STRING" in e for e in errors), errors


def test_catches_missing_version_folder(repo):
    shutil.rmtree(repo / "postprocess" / "1")
    errors = check_repo(repo).errors
    assert any("postprocess" in e and "no numeric version folder" in e for e in errors), errors


def test_catches_ensemble_mapping_to_missing_tensor(repo):
    edit(repo / "mouaadnet" / "config.pbtxt", 'input_map { key: "meta" value: "pre_meta" }',
         'input_map { key: "meta" value: "pre_metadata" }')
    errors = check_repo(repo).errors
    assert any("'pre_metadata'" in e and "missing tensor" in e for e in errors), errors


def test_catches_unknown_step_model_and_bad_keys(repo):
    edit(repo / "mouaadnet" / "config.pbtxt", 'model_name: "postprocess"', 'model_name: "postproc"')
    edit(repo / "mouaadnet" / "config.pbtxt", 'output_map { key: "images" value: "pre_images" }',
         'output_map { key: "pixels" value: "pre_images" }')
    errors = check_repo(repo).errors
    assert any("'postproc' is not in the repository" in e for e in errors), errors
    assert any("'pixels' is not an output of 'preprocess'" in e for e in errors), errors
    assert any("ensemble output 'boxes' is not produced" in e for e in errors), errors


def test_catches_name_mismatch_and_parse_error(repo):
    edit(repo / "postprocess" / "config.pbtxt", 'name: "postprocess"', 'name: "post"')
    (repo / "preprocess" / "config.pbtxt").write_text('name: "preprocess"\ninput [ { name: ')
    errors = check_repo(repo).errors
    assert any("does not match its folder" in e for e in errors), errors
    assert any("preprocess/config.pbtxt: cannot parse" in e for e in errors), errors


def test_cli_repo_check(repo):
    runner = CliRunner()
    ok = runner.invoke(app, ["repo", "check", str(repo)])
    assert ok.exit_code == 0 and "OK" in ok.output
    shutil.rmtree(repo / "postprocess" / "1")
    bad = runner.invoke(app, ["repo", "check", str(repo)])
    assert bad.exit_code == 1 and "no numeric version folder" in bad.output
