import pytest

from model import ConfigError, ModelConfig


def _write(tmp_path, text):
    path = tmp_path / "model.yaml"
    path.write_text(text)
    return path


def test_yaml_round_trip(tmp_path):
    cfg = ModelConfig.from_yaml(_write(tmp_path, "neck_width: 48\nwidths: [16, 32, 48, 64, 128]\n"))
    assert cfg.neck_width == 48 and cfg.widths == [16, 32, 48, 64, 128] and cfg.head_width == 64


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'neck_widht'") as err:
        ModelConfig.from_yaml(_write(tmp_path, "neck_widht: 48\n"))
    assert "model.yaml" in str(err.value)


def test_wrong_type_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="key 'neck_width'"):
        ModelConfig.from_yaml(_write(tmp_path, "neck_width: wide\n"))
    with pytest.raises(ConfigError, match="key 'scene_size'"):
        ModelConfig.from_yaml(_write(tmp_path, "scene_size: '320'\n"))


@pytest.mark.parametrize("text,key", [
    ("scene_size: 300\n", "scene_size"),
    ("widths: [16, 24, 48]\n", "widths"),
    ("widths: [16, 64, 48, 96, 128]\n", "widths"),
    ("attr_dropout: 1.5\n", "attr_dropout"),
    ("neck_width: 63\n", "neck_width"),
])
def test_invalid_values_are_rejected(tmp_path, text, key):
    with pytest.raises(ConfigError, match=f"key '{key}"):
        ModelConfig.from_yaml(_write(tmp_path, text))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        ModelConfig.from_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        ModelConfig.from_yaml(_write(tmp_path, "a: [1,\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        ModelConfig.from_yaml(_write(tmp_path, "- 1\n- 2\n"))
