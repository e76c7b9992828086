"""Readers and source detection on tiny fixture datasets with known defects."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mouaadnet.data.crop_readers import read_peta, read_utkface
from mouaadnet.data.scene_readers import read_coco_json, read_yolo
from mouaadnet.data.sources import load_source
from mouaadnet.data.splits import split_samples
from mouaadnet.data.types import AGE_GROUPS, UNKNOWN


def _image(path: Path, size: tuple[int, int] = (100, 50)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 200)).save(path)


def _yolo_root(tmp_path: Path) -> Path:
    root = tmp_path / "street"
    (root / "labels").mkdir(parents=True)
    _image(root / "images" / "a.jpg")  # 100 x 50
    (root / "labels" / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n"  # good: 40,15,60,35
        "2 0.5 0.5 0.2 0.2\n"  # not a person: ignored
        "0 0.5 oops 0.2 0.2\n"  # line 3 malformed
        "0 0.95 0.5 0.2 0.4\n"  # line 4 sticks out right: clipped to x2=100
        "\n"
        "0 0.5 0.5\n"  # line 6 too few fields
    )
    _image(root / "images" / "empty.png", (30, 40))
    (root / "labels" / "empty.txt").write_text("")
    _image(root / "images" / "nolabel.jpg")
    (root / "images" / "broken.jpg").write_bytes(b"not an image at all")
    (root / "labels" / "broken.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (root / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    return root


def test_read_yolo_counts_clips_and_reports(tmp_path: Path) -> None:
    result = read_yolo(_yolo_root(tmp_path))
    by_name = {Path(s.image_path).name: s for s in result.samples}
    assert sorted(by_name) == ["a.jpg", "empty.png"]
    a = by_name["a.jpg"]
    np.testing.assert_allclose(a.boxes, [[40, 15, 60, 35], [85, 15, 100, 35]], atol=1e-4)
    assert a.has_boxes and a.source == "yolo:street" and a.identity is None
    assert (a.gender == UNKNOWN).all() and (a.age == UNKNOWN).all() and (a.age_group == UNKNOWN).all()
    empty = by_name["empty.png"]
    assert empty.has_boxes and empty.boxes.shape == (0, 4) and empty.num_rows == 0
    located = sorted((Path(p.path).name, p.line, p.kind) for p in result.problems)
    assert located == [
        ("a.txt", 3, "malformed_label"),
        ("a.txt", 4, "box_outside_image"),
        ("a.txt", 6, "malformed_label"),
        ("broken.jpg", None, "unreadable_image"),
        ("nolabel.jpg", None, "missing_label_file"),
        ("orphan.txt", None, "missing_image"),
    ]
    assert all(Path(s.image_path).is_absolute() for s in result.samples)


def test_read_yolo_exif_rotation_swaps_size(tmp_path: Path) -> None:
    root = tmp_path / "exif"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: displayed 50 wide, 100 high
    Image.new("RGB", (100, 50)).save(root / "images" / "r.jpg", exif=exif)
    (root / "labels" / "r.txt").write_text("0 0.5 0.5 1.0 1.0\n")
    sample = read_yolo(root).samples[0]
    np.testing.assert_allclose(sample.boxes, [[0, 0, 50, 100]])


def test_read_yolo_missing_root_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        read_yolo(tmp_path / "nope")
    (tmp_path / "only_images" / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match="labels/"):
        read_yolo(tmp_path / "only_images")


def _coco(tmp_path: Path) -> Path:
    _image(tmp_path / "images" / "1.png", (200, 100))
    _image(tmp_path / "images" / "2.png", (200, 100))
    data = {
        "images": [
            {"id": 1, "file_name": "1.png", "width": 200, "height": 100},
            {"id": 2, "file_name": "2.png"},  # size read from the header
            {"id": 3, "file_name": "missing.png", "width": 10, "height": 10},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10, 10, 20, 40],
                "gender": "female",
                "age": 34,
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 1,
                "bbox": [190, 10, 20, 40],
                "gender": "male",
                "age": 120,
            },
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1},
            {"id": 4, "image_id": 1, "category_id": 2, "bbox": [0, 0, 50, 50]},
            {"id": 5, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10]},
            {"id": 6, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 10], "gender": "robot"},
        ],
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def test_read_coco_json_attributes_and_problems(tmp_path: Path) -> None:
    result = read_coco_json(_coco(tmp_path))
    assert len(result.samples) == 2
    first, second = result.samples
    np.testing.assert_allclose(first.boxes, [[10, 10, 30, 50], [190, 10, 200, 50]])
    np.testing.assert_array_equal(first.gender, [1.0, 0.0])
    np.testing.assert_array_equal(first.age, [34.0, 100.0])
    np.testing.assert_array_equal(first.age_group, [AGE_GROUPS.index("Less45"), AGE_GROUPS.index("Larger60")])
    np.testing.assert_array_equal(second.gender, [UNKNOWN])
    assert Counter(p.kind for p in result.problems) == Counter(
        {"box_outside_image": 1, "age_out_of_range": 1, "malformed_label": 2, "missing_image": 1}
    )


def test_read_coco_json_unusable_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        read_coco_json(bad)
    no_person = tmp_path / "cars.json"
    no_person.write_text(
        json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "car"}]})
    )
    with pytest.raises(ValueError, match="no category named 'person'"):
        read_coco_json(no_person)


UTK_NAMES = {
    "25_0_1_20170116220224657.jpg.chip.jpg": (25, 0.0),
    "117_1_0_20170110183726390.jpg.chip.jpg": (100, 1.0),  # clipped
    "61_1_20170109142408075.jpg.chip.jpg": (61, 1.0),  # no race field
    "24_0_1_20170116220224657 .jpg.chip.jpg": (24, 0.0),  # space before .jpg
    "55_0_0_20170116232725357jpg.chip.jpg": (55, 0.0),  # no dot before jpg
}


def test_read_utkface_lenient_names(tmp_path: Path) -> None:
    for name in [*UTK_NAMES, "hello.jpg", "30_7_0_1.jpg.chip.jpg"]:
        _image(tmp_path / name, (8, 8))
    (tmp_path / "README.txt").write_text("ignored")
    result = read_utkface(tmp_path)
    got = {Path(s.image_path).name: (float(s.age[0]), float(s.gender[0])) for s in result.samples}
    assert got == {name: (float(a), g) for name, (a, g) in UTK_NAMES.items()}
    assert all(s.mode == "crop" and s.identity is None and s.boxes.shape == (0, 4) for s in result.samples)
    kinds = Counter(p.kind for p in result.problems)
    assert kinds == Counter({"nonstandard_name": 3, "bad_name": 2, "age_out_of_range": 1})


def _peta(tmp_path: Path, persons: int = 12, per_person: int = 3) -> Path:
    root = tmp_path / "peta"
    lines = ["file,subset,person_id,gender,age_group,attributes"]
    for pid in range(persons):
        for k in range(per_person):
            name = f"images/S_{pid}_{k}.jpg"
            _image(root / name, (10, 25))
            lines.append(f"{name},S,{pid},{'female' if pid % 2 else 'male'},{AGE_GROUPS[pid % 5]},x y")
    lines.append("images/nogender.jpg,S,99,,,")
    _image(root / "images" / "nogender.jpg", (10, 25))
    lines.append("images/gone.jpg,S,98,male,Less30,")
    lines.append("images/S_0_0.jpg,S,97,alien,Less99,")
    lines.append("images/S_0_0.jpg,S")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def test_read_peta_labels_identity_and_problems(tmp_path: Path) -> None:
    result = read_peta(_peta(tmp_path))
    assert len(result.samples) == 12 * 3 + 2
    first = result.samples[0]
    assert (
        first.identity == "S/0"
        and first.gender[0] == 0.0
        and first.age_group[0] == 0
        and first.age[0] == UNKNOWN
    )
    nogender = result.samples[36]
    assert nogender.gender[0] == UNKNOWN and nogender.age_group[0] == UNKNOWN
    located = sorted((p.line, p.kind) for p in result.problems)
    # Header is line 1, 37 data rows follow: the bad rows are lines 39-41 of the CSV.
    assert located == [
        (39, "missing_image"),
        (40, "malformed_label"),
        (40, "malformed_label"),
        (41, "malformed_label"),
    ]


def test_read_peta_missing_columns(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("file,gender\nimages/a.jpg,male\n")
    with pytest.raises(
        ValueError, match=r"labels.csv: missing required columns \['subset', 'person_id', 'age_group'\]"
    ):
        read_peta(tmp_path)


def test_peta_split_by_identity_never_leaks(tmp_path: Path) -> None:
    samples = read_peta(_peta(tmp_path, persons=40)).samples
    train, val = split_samples(samples, 0.25, seed=3)
    assert len(train) + len(val) == len(samples) and train and val
    assert not {s.identity for s in train} & {s.identity for s in val}
    again = split_samples(samples, 0.25, seed=3)
    assert [s.image_path for s in again[1]] == [s.image_path for s in val]


def test_split_by_path_is_stable_and_rejects_bad_fraction(tmp_path: Path) -> None:
    samples = load_source("synthetic:40:0").samples
    train, val = split_samples(samples, 0.5, seed=0)
    assert {s.image_path for s in val} == {s.image_path for s in split_samples(samples[::-1], 0.5, seed=0)[1]}
    assert 0 < len(val) < 40
    with pytest.raises(ValueError, match="val_fraction"):
        split_samples(samples, 1.0, seed=0)


def test_load_source_detects_formats(tmp_path: Path) -> None:
    assert load_source(str(_yolo_root(tmp_path))).samples[0].source == "yolo:street"
    assert len(load_source(str(_coco(tmp_path / "c"))).samples) == 2
    assert len(load_source(str(_peta(tmp_path, persons=2))).samples) == 2 * 3 + 2
    utk = tmp_path / "utk"
    _image(utk / "25_0_1_20170116220224657.jpg.chip.jpg", (8, 8))
    assert load_source(str(utk)).samples[0].source == "utkface:utk"
    synth = load_source("synthetic:3:7")
    assert len(synth.samples) == 3 and all(s.image is not None for s in synth.samples)
    with pytest.raises(ValueError, match="does not exist"):
        load_source(str(tmp_path / "missing"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="unknown format"):
        load_source(str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="synthetic:N"):
        load_source("synthetic:many")


def test_load_source_tree_of_yolo_dirs(tmp_path: Path) -> None:
    for split in ("train", "val"):
        root = tmp_path / "coco_person" / split
        (root / "labels").mkdir(parents=True)
        _image(root / "images" / "x.jpg")
        (root / "labels" / "x.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    result = load_source(str(tmp_path / "coco_person"))
    assert [s.source for s in result.samples] == ["yolo:coco_person/train", "yolo:coco_person/val"]


def test_check_sources_reports_counts_problems_and_corrupt_images(tmp_path: Path) -> None:
    from mouaadnet.data.check import check_sources, format_report

    root = _yolo_root(tmp_path)
    # A JPEG whose header parses but whose data is cut off: only the full decode of the check finds it.
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "images" / "cut.jpg", quality=95)
    data = (root / "images" / "cut.jpg").read_bytes()
    (root / "images" / "cut.jpg").write_bytes(data[: len(data) // 2])
    (root / "labels" / "cut.txt").write_text("")
    report = check_sources([str(root), str(tmp_path / "missing")], max_examples=1)
    yolo, missing = report.sources
    assert yolo.samples == 3 and yolo.persons == 2 and yolo.gender == {"male": 0, "female": 0, "unknown": 2}
    assert yolo.problems["unreadable_image"] == 2 and yolo.problems["malformed_label"] == 2
    assert len(yolo.examples["malformed_label"]) == 1 and yolo.examples["malformed_label"][0].endswith(
        "a.txt:3: non-numeric field: could not convert string to float: 'oops': '0 0.5 oops 0.2 0.2'"
    )
    assert missing.error is not None and not report.ok
    text = format_report(report)
    assert "a.txt:3:" in text and "PROBLEMS" in text
    assert report.to_dict()["sources"][0]["problems"]["unreadable_image"] == 2
    json.dumps(report.to_dict())


def test_check_info_problems_keep_report_ok(tmp_path: Path) -> None:
    from mouaadnet.data.check import check_sources

    _image(tmp_path / "utk" / "117_1_0_20170110183726390.jpg.chip.jpg", (8, 8))
    report = check_sources([str(tmp_path / "utk")])
    assert report.ok and report.sources[0].problems == {"age_out_of_range": 1}


def test_video_frames_split_by_blocks_of_consecutive_frames(tmp_path: Path) -> None:
    from mouaadnet.data.scene_readers import FRAME_BLOCK

    root = tmp_path / "cctv"
    (root / "labels").mkdir(parents=True)
    rows = ["file,camera,date"]
    for cam in ("camA", "camB"):
        for i in range(25):
            name = f"{cam}_20230101_{i:03d}"
            _image(root / "images" / f"{name}.jpg", (40, 30))
            (root / "labels" / f"{name}.txt").write_text("0 0.5 0.5 0.2 0.4\n")
            rows.append(f"images/{name}.jpg,{cam},20230101")
    (root / "frames.csv").write_text("\n".join(rows) + "\n")
    samples = read_yolo(root).samples
    ids = {Path(s.image_path).stem: s.identity for s in samples}
    assert ids["camA_20230101_000"] == ids["camA_20230101_009"] == "camA_20230101_0"
    assert ids["camA_20230101_010"] == "camA_20230101_1" and ids["camB_20230101_024"] == "camB_20230101_2"
    assert len(set(ids.values())) == 2 * -(-25 // FRAME_BLOCK)
    train, val = split_samples(samples, 0.3, seed=0)
    assert {s.identity for s in train}.isdisjoint({s.identity for s in val})
