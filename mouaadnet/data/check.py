"""Validate data sources: label counts, problems by kind and images that do not decode."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from PIL import Image
from tqdm import tqdm

from .readers import Problem, ReadResult
from .sources import load_source
from .types import AGE_GROUPS, Sample

DECODE_THREADS = 8  # PIL releases the GIL while decoding, so threads speed up the full decode pass


@dataclass
class SourceReport:
    """Counts and problems of one source spec."""

    spec: str
    error: str | None = None  # set when the source as a whole could not be read
    samples: int = 0
    persons: int = 0
    scene_images: int = 0
    crop_images: int = 0
    gender: dict[str, int] = field(default_factory=dict)
    age_known: int = 0
    age_groups: dict[str, int] = field(default_factory=dict)
    problems: dict[str, int] = field(default_factory=dict)  # kind -> count
    examples: dict[str, list[str]] = field(default_factory=dict)  # kind -> "file:line: message"
    info_kinds: list[str] = field(default_factory=list)  # kinds that only inform and do not fail the check

    @property
    def ok(self) -> bool:
        return self.error is None and all(k in self.info_kinds for k in self.problems)


@dataclass
class DataReport:
    """The report of all checked sources."""

    sources: list[SourceReport]

    @property
    def ok(self) -> bool:
        """True when every source was read and has no problems other than informational ones."""
        return all(s.ok for s in self.sources)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"ok": self.ok, "sources": [{**asdict(s), "ok": s.ok} for s in self.sources]}


def _decode_problem(path: str) -> Problem | None:
    """A Problem when the image does not fully decode, else None."""
    try:
        with Image.open(path) as img:
            img.load()
    except Exception as err:  # PIL raises many types for bad files
        return Problem(path, None, "unreadable_image", f"cannot decode: {type(err).__name__}: {err}")
    return None


def decode_all(samples: list[Sample], desc: str = "decode") -> list[Problem]:
    """Try to decode every on-disk image once (with a progress bar); returns the failures."""
    paths = sorted({s.image_path for s in samples if s.image is None})
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        results = list(tqdm(pool.map(_decode_problem, paths), total=len(paths), desc=desc, unit="img"))
    return [p for p in results if p is not None]


def _count_labels(report: SourceReport, samples: list[Sample]) -> None:
    gender: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    for s in samples:
        report.scene_images += s.mode == "scene"
        report.crop_images += s.mode == "crop"
        report.persons += s.num_rows
        for g in s.gender:
            gender["female" if g == 1 else "male" if g == 0 else "unknown"] += 1
        report.age_known += int(s.age_mask.sum())
        for a in s.age_group:
            groups[AGE_GROUPS[a] if a >= 0 else "unknown"] += 1
    report.samples = len(samples)
    report.gender = {k: gender[k] for k in ("male", "female", "unknown")}
    report.age_groups = {k: groups[k] for k in (*AGE_GROUPS, "unknown")}


def _add_problems(report: SourceReport, problems: list[Problem], max_examples: int) -> None:
    counts: Counter[str] = Counter(p.kind for p in problems)
    report.problems = dict(sorted(counts.items()))
    report.info_kinds = sorted({p.kind for p in problems if p.is_info})
    for p in problems:
        shown = report.examples.setdefault(p.kind, [])
        if len(shown) < max_examples:
            shown.append(str(p))


def check_source(spec: str, max_examples: int = 5, decode: bool = True) -> SourceReport:
    """Read one source and (optionally) decode each of its images."""
    report = SourceReport(spec=spec)
    try:
        result: ReadResult = load_source(spec)
    except ValueError as err:
        report.error = str(err)
        return report
    problems = list(result.problems)
    if decode:
        problems += decode_all(result.samples, desc=spec)
    _count_labels(report, result.samples)
    _add_problems(report, problems, max_examples)
    return report


def check_sources(specs: list[str], max_examples: int = 5, decode: bool = True) -> DataReport:
    """Check every source spec; unusable sources are reported, not raised."""
    return DataReport([check_source(spec, max_examples, decode) for spec in specs])


def format_report(report: DataReport) -> str:
    """Human-readable multi-line report."""
    lines = []
    for s in report.sources:
        lines.append(f"== {s.spec}: {'OK' if s.ok else 'PROBLEMS'}")
        if s.error:
            lines.append(f"  error: {s.error}")
            continue
        lines.append(
            f"  samples: {s.samples} (scene {s.scene_images}, crop {s.crop_images}), persons: {s.persons}"
        )
        lines.append("  gender: " + ", ".join(f"{k} {v}" for k, v in s.gender.items()))
        lines.append(f"  age known: {s.age_known}")
        lines.append("  age groups: " + ", ".join(f"{k} {v}" for k, v in s.age_groups.items()))
        for kind, count in s.problems.items():
            note = " (info)" if kind in s.info_kinds else ""
            lines.append(f"  {kind}{note}: {count}")
            lines.extend(f"    {example}" for example in s.examples.get(kind, []))
    lines.append(f"overall: {'OK' if report.ok else 'PROBLEMS FOUND'}")
    return "\n".join(lines)
