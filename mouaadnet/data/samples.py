"""Example photos that ship in pip packages (free to use anywhere): scikit-image's astronaut, matplotlib's
Grace Hopper. The apps offer them, the stand-in model calibrates on them, tests read them."""

from __future__ import annotations

from pathlib import Path


def sample_images() -> dict[str, Path]:
    """Example photos that ship in pip packages: scikit-image's astronaut, matplotlib's grace_hopper."""
    found: dict[str, Path] = {}
    try:
        import skimage.data

        path = Path(skimage.data.__file__).parent / "astronaut.png"
        if path.is_file():
            found["astronaut.png"] = path
    except ImportError:
        pass
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        if path.is_file():
            found["grace_hopper.jpg"] = path
    except ImportError:
        pass
    return found


