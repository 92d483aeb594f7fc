"""README.md, CHANGELOG.md and docs/*.md against benchmarks/results/.

The rule, in two halves:

1. Every results file the written pages cite exists. A citation is a name
   starting ``bench_``, ``compare_``, ``diag_``, ``recon_fit_gap`` or
   ``recon_confidence`` (letters,
   digits, underscores), bare or after ``benchmarks/results/``, optionally with
   an extension (``.json``, ``.md``, ``.png``, ``.csv``) or a brace group
   (``.{md,json,png}``). A bare name or a brace group cites the run: at least
   one file with that stem must exist; a name with an extension cites that
   file, which must exist. Not citations: script names (followed by ``.py``)
   and patterns (followed by ``*`` or ``<``, or ending in ``_``).
2. Every file in benchmarks/results/ is cited: a file counts as cited when its
   stem is (citing ``bench_recon`` or ``bench_recon.md`` covers
   ``bench_recon.{json,md,png,csv}``).
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT_EXTS = {".json", ".md", ".png", ".csv"}
_NAME = re.compile(
    r"(?<![A-Za-z0-9_/.-])(?:benchmarks/results/)?"
    r"((?:bench|compare|diag)_[A-Za-z0-9_]+|recon_(?:fit_gap|confidence)[A-Za-z0-9_]*)"
    r"(\.\{[a-z,]+\}|\.[A-Za-z0-9]+)?"
    r"([*<]?)"
)


def citations(text: str) -> list[tuple[str, str | None]]:
    """``(stem, file name or None)`` for every citation in ``text`` (None: the run, any extension)."""
    out = []
    for m in _NAME.finditer(text):
        stem, ext, pattern = m.group(1), m.group(2), m.group(3)
        if pattern or stem.endswith("_") or ext == ".py":
            continue
        if ext and not ext.startswith(".{") and ext.lower() in RESULT_EXTS:
            out.append((stem, stem + ext))
        elif ext and not ext.startswith(".{"):
            continue  # another suffix (.pt, .h5, ...): not a results file
        else:
            out.append((stem, None))
    return out


def written_pages(root: Path) -> list[Path]:
    pages = [root / "README.md", root / "CHANGELOG.md", *sorted((root / "docs").glob("*.md"))]
    return [p for p in pages if p.is_file()]


def check(root: Path) -> tuple[list[str], list[str]]:
    """-> (citations of missing files as ``page: name``, results files cited by nothing)."""
    results = root / "benchmarks" / "results"
    files = sorted(p.name for p in results.iterdir() if p.is_file() and p.suffix.lower() in RESULT_EXTS)
    stems = {Path(f).stem for f in files}
    missing, cited = [], set()
    for page in written_pages(root):
        for stem, name in citations(page.read_text(encoding="utf-8")):
            cited.add(stem)
            if not ((name in files) if name else (stem in stems)):
                missing.append(f"{page.relative_to(root)}: {name or stem}")
    uncited = [f for f in files if Path(f).stem not in cited]
    return sorted(set(missing)), uncited


def test_every_citation_exists_and_every_result_is_cited():
    missing, uncited = check(ROOT)
    assert not missing, f"cited but not in benchmarks/results/: {missing}"
    assert not uncited, f"in benchmarks/results/ but cited by no page: {uncited}"


def _tree(tmp_path: Path, readme: str, results: list[str]) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "README.md").write_text(readme)
    for name in results:
        (tmp_path / "benchmarks" / "results" / name).write_text("x")
    return tmp_path


def test_a_missing_file_is_reported(tmp_path):
    root = _tree(tmp_path, "see `benchmarks/results/bench_a.md` and bench_b", ["bench_a.json"])
    missing, uncited = check(root)
    assert missing == ["README.md: bench_a.md", "README.md: bench_b"]
    assert uncited == []  # bench_a.json is cited through its stem nonetheless


def test_an_uncited_file_is_reported(tmp_path):
    root = _tree(tmp_path, "`bench_a.{md,json}` by `python benchmarks/bench_c.py`; bench_d_* and bench_e_<name>",
                 ["bench_a.json", "bench_a.md", "bench_a.png", "bench_c.md", "bench_d_x.md"])
    missing, uncited = check(root)
    assert missing == []
    assert uncited == ["bench_c.md", "bench_d_x.md"]


def test_citation_forms():
    text = ("bench_recon, benchmarks/results/compare_scr_x.json, `diag_scr.{md,json}`, recon_fit_gap.md, "
            "bench_recon.py, runs/bench_x.pt, bench_recon_*, bench_y_<name>, compare_recon_")
    assert citations(text) == [("bench_recon", None), ("compare_scr_x", "compare_scr_x.json"),
                               ("diag_scr", None), ("recon_fit_gap", "recon_fit_gap.md")]
