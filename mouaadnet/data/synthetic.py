"""Deterministic, licence-free synthetic people scenes whose looks encode gender and age (learnability test data)."""

from __future__ import annotations

import colorsys
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .readers import age_to_group
from .types import MAX_AGE, Sample

MIN_PERSON_PX = 30
MAX_PERSON_FRACTION = 0.9  # tallest person relative to the image height
MAX_PERSONS = 5
MAX_IOU = 0.45  # heavier overlaps hide too much of a person to label it
MIN_VISIBLE = 0.5  # fraction of a person's box that must lie inside the image
GREY_HAIR = np.array([235, 235, 235], np.float32)
SKIN_TONES = ((255, 219, 172), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (110, 70, 40))
HAIR_BASES = ((20, 20, 20), (60, 40, 25), (95, 60, 30), (40, 30, 20), (120, 80, 40))
SCENE_SOURCE = "synthetic"


def _hsv(rng: np.random.Generator, hue_deg: float, saturation: float) -> tuple[int, int, int]:
    """An RGB colour of the given hue and saturation with a random (clearly visible) value."""
    r, g, b = colorsys.hsv_to_rgb((hue_deg % 360) / 360, saturation, rng.uniform(0.6, 0.95))
    return int(r * 255), int(g * 255), int(b * 255)


def _clothing_colour(rng: np.random.Generator, female: bool, age: float) -> tuple[int, int, int]:
    """Hue says gender: warm (red/orange/pink) for women, cool (green/cyan/blue) for men.

    Saturation says age: vivid at 0, muted at MAX_AGE. Clothing covers most of a person, so this is the
    large-area age cue a tiny network picks up early; grey hair and body proportions back it up.
    """
    saturation = float(np.clip(0.95 - 0.75 * age / MAX_AGE + rng.normal(0, 0.03), 0.12, 1.0))
    return _hsv(rng, rng.uniform(-35, 40) if female else rng.uniform(160, 250), saturation)


def _hair_colour(rng: np.random.Generator, age: float) -> tuple[int, int, int]:
    """Hair grey level linear in age: dark at 0, near white at MAX_AGE."""
    base = np.array(HAIR_BASES[rng.integers(len(HAIR_BASES))], np.float32)
    t = age / MAX_AGE
    return tuple(int(v) for v in (1 - t) * base + t * GREY_HAIR)


def _person_patch(rng: np.random.Generator, height: int, female: bool, age: float) -> Image.Image:
    """An RGBA image of one standing person of the given height (alpha = the person's pixels)."""
    h = float(height)
    child = float(np.clip(1 - age / 18, 0, 1))  # 1 for a newborn, 0 from 18 years on
    stoop = float(np.clip((age - 60) / 40, 0, 1))  # 0 until 60, 1 at 100
    width = int(h * 0.8) + 4
    patch = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(patch)
    cx = width / 2
    lean = stoop * 0.14 * h * (1 if rng.random() < 0.5 else -1)  # the elderly bend forward
    top = stoop * 0.07 * h  # and stand lower
    head = h * (0.13 + 0.12 * child)  # children have big heads for their bodies
    shoulder = h * rng.uniform(0.22, 0.27) * (0.85 if female else 1.0)
    hip_y = top + head + (h - top - head) * 0.45
    skin = tuple(
        int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in SKIN_TONES[rng.integers(len(SKIN_TONES))]
    )
    cloth = _clothing_colour(rng, female, age)
    hair = _hair_colour(rng, age)
    head_x = cx + lean
    neck_y = top + head
    if female:  # long hair behind the head, down to the shoulders
        draw.rectangle(
            [head_x - head * 0.62, top + head * 0.3, head_x + head * 0.62, neck_y + head * 0.4], fill=hair
        )
    # Torso and arms lean with the stoop: a quadrilateral from the shoulders to the hips.
    torso = [
        (head_x - shoulder / 2, neck_y),
        (head_x + shoulder / 2, neck_y),
        (cx + shoulder / 2.4, hip_y),
        (cx - shoulder / 2.4, hip_y),
    ]
    draw.polygon(torso, fill=cloth)
    arm = max(2.0, shoulder * 0.18)
    for side in (-1, 1):
        x = head_x + side * shoulder / 2
        draw.polygon(
            [
                (x, neck_y),
                (x + side * arm, neck_y),
                (cx + side * (shoulder / 2.4 + arm), hip_y + head * 0.3),
                (cx + side * shoulder / 2.4, hip_y + head * 0.3),
            ],
            fill=cloth,
        )
    _draw_lower_body(draw, rng, cx, hip_y, h, shoulder, female, cloth, skin)
    draw.ellipse([head_x - head / 2, top, head_x + head / 2, neck_y], fill=skin)
    # Hair cap on the top of the head: its grey level is the main age cue.
    draw.chord([head_x - head / 2, top, head_x + head / 2, neck_y], 180, 360, fill=hair)
    return patch


def _draw_lower_body(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    cx: float,
    hip_y: float,
    h: float,
    shoulder: float,
    female: bool,
    cloth: tuple,
    skin: tuple,
) -> None:
    """Women wear a flared dress over thin legs; men wear trousers with two separate legs."""
    leg_w = shoulder * 0.32
    if female:
        knee_y = hip_y + (h - hip_y) * 0.6
        flare = shoulder * rng.uniform(0.75, 0.9)
        for side in (-1, 1):
            x = cx + side * shoulder * 0.18
            draw.rectangle([x - leg_w * 0.35, knee_y - 1, x + leg_w * 0.35, h - 1], fill=skin)
        draw.polygon(
            [
                (cx - shoulder / 2.4, hip_y),
                (cx + shoulder / 2.4, hip_y),
                (cx + flare, knee_y),
                (cx - flare, knee_y),
            ],
            fill=cloth,
        )
        return
    trousers = tuple(int(c * 0.45) for c in cloth)  # darker shade of the shirt keeps the age cue
    for side in (-1, 1):
        x = cx + side * shoulder * 0.22
        draw.rectangle([x - leg_w / 2, hip_y, x + leg_w / 2, h - 1], fill=trousers)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A random gradient with low-frequency noise and a few clutter shapes."""
    c0, c1 = rng.uniform(30, 230, 3).astype(np.float32), rng.uniform(30, 230, 3).astype(np.float32)
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    grad = c0 + (c1 - c0) * t  # (size, 1, 3): vertical, rotated below half of the time
    img = np.broadcast_to(grad, (size, size, 3))
    if rng.random() < 0.5:
        img = img.transpose(1, 0, 2)
    low = Image.fromarray(rng.integers(0, 60, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BILINEAR)
    img = np.clip(img + np.asarray(low, np.float32) - 30, 0, 255).astype(np.uint8)
    bg = Image.fromarray(img)
    draw = ImageDraw.Draw(bg)
    for _ in range(rng.integers(2, 8)):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 16, size // 2, 2)
        colour = tuple(int(v) for v in rng.integers(20, 236, 3))
        shape = draw.rectangle if rng.random() < 0.6 else draw.ellipse
        shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour)
    return bg


def _iou(box: np.ndarray, others: list[np.ndarray]) -> float:
    """Largest IoU between box and any of others (0 when none)."""
    best = 0.0
    for o in others:
        iw = min(box[2], o[2]) - max(box[0], o[0])
        ih = min(box[3], o[3]) - max(box[1], o[1])
        if iw > 0 and ih > 0:
            inter = iw * ih
            union = (box[2] - box[0]) * (box[3] - box[1]) + (o[2] - o[0]) * (o[3] - o[1]) - inter
            best = max(best, inter / union)
    return best


def _place(rng: np.random.Generator, patch: Image.Image, size: int, boxes: list[np.ndarray]):
    """A paste position and the clipped person box, or None when no acceptable spot was found."""
    x0, y0, x1, y1 = patch.getchannel("A").getbbox()
    pw, ph = x1 - x0, y1 - y0
    for _ in range(10):
        # Up to half the person may fall outside the image: people touch and cross the border.
        left = rng.uniform(-0.5 * pw, size - 0.5 * pw)
        upper = rng.uniform(-0.5 * ph, size - 0.5 * ph) if ph < size else rng.uniform(size - ph, 0)
        px, py = int(round(left)) - x0, int(round(upper)) - y0
        full = np.array([px + x0, py + y0, px + x1, py + y1], np.float32)
        box = np.clip(full, 0, size)
        visible = (box[2] - box[0]) * (box[3] - box[1]) / float(pw * ph)
        if visible >= MIN_VISIBLE and _iou(box, boxes) <= MAX_IOU:
            return (px, py), box
    return None


def generate_scene(
    rng: np.random.Generator, size: int = 320
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One scene: (image uint8 HxWx3, boxes float32 [K,4] x1y1x2y2, gender float32 [K] 1=female, age float32 [K])."""
    scene = _background(rng, size)
    boxes, genders, ages = [], [], []
    max_h = max(MIN_PERSON_PX + 1, int(size * MAX_PERSON_FRACTION))
    for _ in range(rng.integers(0, MAX_PERSONS + 1)):
        height = int(
            np.exp(rng.uniform(np.log(MIN_PERSON_PX), np.log(max_h)))
        )  # log-uniform: many small people
        female, age = bool(rng.integers(0, 2)), float(rng.integers(0, MAX_AGE + 1))
        patch = _person_patch(rng, height, female, age)
        placed = _place(rng, patch, size, boxes)
        if placed is None:
            continue
        scene.paste(patch, placed[0], patch)
        boxes.append(placed[1])
        genders.append(float(female))
        ages.append(age)
    image = _finish(rng, scene)
    box_array = np.stack(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32)
    return image, box_array, np.array(genders, np.float32), np.array(ages, np.float32)


def _finish(rng: np.random.Generator, image: Image.Image) -> np.ndarray:
    """Mild per-pixel noise so that flat colours are not a give-away."""
    arr = np.asarray(image, np.int16)
    noise = rng.integers(-6, 7, arr.shape[:2] + (1,), dtype=np.int16)
    return np.clip(arr + noise, 0, 255).astype(np.uint8)


def generate_crop(rng: np.random.Generator, size: int = 112) -> tuple[np.ndarray, float, float]:
    """One person centred in a size x size image: (image uint8, gender 1=female, age); children are shorter."""
    scene = _background(rng, size)
    female, age = bool(rng.integers(0, 2)), float(rng.integers(0, MAX_AGE + 1))
    height = int(size * 0.85 * (0.6 + 0.4 * min(age / 18, 1.0)))
    patch = _person_patch(rng, height, female, age)
    x0, y0, x1, y1 = patch.getchannel("A").getbbox()
    px = (size - (x1 - x0)) // 2 - x0
    py = int(size * 0.95) - y1
    scene.paste(patch, (px, py), patch)
    return _finish(rng, scene), float(female), age


def _scene_sample(rng: np.random.Generator, size: int, path: str) -> Sample:
    image, boxes, gender, age = generate_scene(rng, size)
    return Sample(
        image_path=path,
        mode="scene",
        source=SCENE_SOURCE,
        boxes=boxes,
        gender=gender,
        age=age,
        age_group=np.array([age_to_group(a) for a in age], np.int64),
        has_boxes=True,
        image=image,
    )


def synthetic_scenes(n: int, seed: int, size: int = 320) -> list[Sample]:
    """n in-memory scene samples (image field set), identical for the same seed."""
    rng = np.random.default_rng(seed)
    return [_scene_sample(rng, size, f"synthetic://scene/{seed}/{i:06d}") for i in range(n)]


def synthetic_crops(n: int, seed: int, size: int = 112) -> list[Sample]:
    """n in-memory crop samples, one person centred per image, identical for the same seed."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        image, gender, age = generate_crop(rng, size)
        samples.append(
            Sample(
                image_path=f"synthetic://crop/{seed}/{i:06d}",
                mode="crop",
                source=SCENE_SOURCE,
                gender=np.array([gender], np.float32),
                age=np.array([age], np.float32),
                age_group=np.array([age_to_group(age)], np.int64),
                image=image,
            )
        )
    return samples


def _coco_dict(samples: list[Sample], file_names: list[str]) -> dict:
    """COCO detection JSON (with gender/age per annotation) for scene samples."""
    images, annotations = [], []
    for image_id, (sample, name) in enumerate(zip(samples, file_names, strict=True), start=1):
        h, w = sample.image.shape[:2]
        images.append({"id": image_id, "file_name": name, "width": int(w), "height": int(h)})
        for box, gender, age in zip(sample.boxes, sample.gender, sample.age, strict=True):
            x1, y1, x2, y2 = (round(float(v), 2) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                    "area": round((x2 - x1) * (y2 - y1), 2),
                    "gender": "female" if gender == 1 else "male",
                    "age": int(age),
                }
            )
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}


def _write_split(split_dir: Path, rng: np.random.Generator, n: int, size: int) -> dict:
    images_dir = split_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    samples = [_scene_sample(rng, size, "") for _ in range(n)]
    names = [f"{i:06d}.png" for i in range(n)]
    for name in set(os.listdir(images_dir)) - set(names):  # stale files of an earlier, larger run
        if name.endswith(".png"):
            (images_dir / name).unlink()
    for sample, name in zip(samples, names, strict=True):
        # PIL writes no timestamp into PNGs: the same pixels give the same bytes.
        Image.fromarray(sample.image).save(images_dir / name, format="PNG", compress_level=1)
    coco = _coco_dict(samples, [f"{name}" for name in names])
    text = json.dumps(coco, sort_keys=True, indent=1) + "\n"
    (split_dir / "annotations.json").write_text(text, encoding="utf-8")
    return {"images": n, "persons": len(coco["annotations"]), "dir": str(split_dir)}


def write_synthetic_dataset(
    out_dir: str | os.PathLike, n_train: int, n_val: int, seed: int, size: int = 320
) -> dict:
    """Write out_dir/{train,val}/images/*.png + annotations.json (COCO + gender/age); byte-identical per seed."""
    if n_train < 0 or n_val < 0:
        raise ValueError(f"write_synthetic_dataset: n_train={n_train} and n_val={n_val} must be >= 0")
    out = Path(out_dir)
    # Separate streams per split so that changing n_train does not change the validation set.
    train_rng, val_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    return {
        "seed": seed,
        "size": size,
        "train": _write_split(out / "train", train_rng, n_train, size),
        "val": _write_split(out / "val", val_rng, n_val, size),
    }
