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
