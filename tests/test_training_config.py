"""Training config overrides (`mouaadnet train --set KEY=VALUE`): same validation as the file, errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.config import ConfigError
from mouaadnet.training.config import TrainConfig, apply_overrides

REAL = Path(__file__).resolve().parents[1] / "configs" / "real.yaml"


def test_overrides_reach_nested_keys_and_list_items_and_leave_the_original_alone() -> None:
    cfg = TrainConfig.from_yaml(REAL)
    changed = apply_overrides(cfg, ["data.paste.probability=0", "data.crop.1.max_val=5", "optim.epochs=3",
                                    "data.crop_framing.zoom=[1, 1]", "data.scene=[]"])
    assert changed.data.paste.probability == 0.0 and changed.data.crop[1].max_val == 5
    assert changed.optim.epochs == 3 and changed.data.crop_framing.zoom == [1.0, 1.0] and changed.data.scene == []
    assert cfg.model_dump() == TrainConfig.from_yaml(REAL).model_dump()  # the original is left as the file says


@pytest.mark.parametrize("override, message", [
    ("data.pastee.probability=0", "unknown key data.pastee"),
    ("data.crop.9.path=x", "data.crop.9 is not an index of a list of 3"),
    ("optim.epochs=abc", "optim.epochs"),
    ("data.paste.probability=2", "data.paste.probability"),
    ("seed", "expected KEY=VALUE"),
    ("data.cache.deep=1", "data.cache holds a value"),
    ("optim.lr=[1", "not valid YAML"),
])
def test_bad_overrides_name_what_is_wrong(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        apply_overrides(TrainConfig.from_yaml(REAL), [override])
