"""The champion rule: a candidate is promoted (and published to Triton) only when it beats the champion on the
real validation set; the shipped weights are the first champion."""

from __future__ import annotations

import math

import pytest

from mouaadnet.pipeline.champion import decide


def test_no_champion_promotes() -> None:
    assert decide(0.1, None).promote


@pytest.mark.parametrize(("candidate", "champion", "promote"), [
    (0.61, 0.60, True),
    (0.60, 0.60, False),  # a tie keeps the model users already have
    (0.30, 0.60, False),
    (math.nan, 0.60, False),  # an unmeasured candidate never replaces a measured champion
    (0.10, math.nan, True),  # ... but a measured one replaces an unmeasured champion
])
def test_candidate_must_beat_the_champion(candidate: float, champion: float, promote: bool) -> None:
    decision = decide(candidate, ("3", champion))
    assert decision.promote is promote
    assert ("NOT promoted" in decision.message) is (not promote)
    assert decision.champion_version == "3"


def test_a_candidate_must_also_beat_the_champion_on_every_further_real_set() -> None:
    from mouaadnet.pipeline.champion import beats_on_every_set, real_sets

    assert real_sets("examples/real, ../shared/data/pennfudan,") == ["examples/real", "../shared/data/pennfudan"]
    assert beats_on_every_set({"a": 0.5, "b": 0.7}, {"a": 0.4, "b": 0.6})[0]
    better, table = beats_on_every_set({"a": 0.5, "b": 0.6}, {"a": 0.4, "b": 0.6})  # a tie on b keeps the champion
    assert not better and "b 0.6000 vs 0.6000" in table
    assert not beats_on_every_set({"a": math.nan}, {"a": 0.4})[0]  # an unmeasured set never wins
    assert beats_on_every_set({"a": 0.1}, {"a": math.nan})[0]
