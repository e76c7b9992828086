"""Body crops pasted into scenes: box = pasted rectangle, attributes follow, hidden people are dropped."""

from __future__ import annotations

import numpy as np

from mouaadnet.data.paste import paste_bodies


def test_pasted_body_gets_its_box_and_labels_and_covered_person_is_dropped() -> None:
    scene = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[0, 0, 100, 100], [90, 90, 99, 99]], np.float32)  # whole image, a corner person
    body = np.full((40, 20, 3), 200, np.uint8)
    people = paste_bodies(scene, boxes, [(body, 1.0, -1.0, 2)], np.random.default_rng(0), (0.9, 0.9))
    x1, y1, x2, y2 = people.boxes[-1]
    assert (y2 - y1, x2 - x1) == (90, 45)
    assert people.image[int(y1):int(y2), int(x1):int(x2)].mean() > 100  # the body is there (colour-jittered)
    assert people.gender.tolist() == [1.0] and people.age.tolist() == [-1.0] and people.age_group.tolist() == [2]
    # The whole-image person is 40 % covered (kept); a corner person fully under the body would be dropped.
    covered = (boxes[:, 0] >= x1) & (boxes[:, 2] <= x2) & (boxes[:, 1] >= y1) & (boxes[:, 3] <= y2)
    assert set(people.keep.tolist()) == {i for i in range(2) if not covered[i]}
    assert len(people.boxes) == len(people.keep) + 1


def test_paste_keeps_rows_aligned_with_several_bodies() -> None:
    rng = np.random.default_rng(3)
    scene = rng.integers(0, 255, (320, 320, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 60, 150], [200, 50, 260, 200]], np.float32)
    bodies = [(np.full((80, 30, 3), 10 * i, np.uint8), float(i % 2), -1.0, i) for i in range(3)]
    people = paste_bodies(scene, boxes, bodies, rng)
    assert len(people.boxes) == len(people.keep) + len(people.gender)
    assert len(people.gender) == len(people.age) == len(people.age_group) >= 1
    assert (people.boxes[:, 2] <= 320).all() and (people.boxes[:, 3] <= 320).all()
