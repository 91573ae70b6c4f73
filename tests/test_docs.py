"""The documentation is self-contained: what the code, tests and docs point a reader to exists in this
repository. References to docs/ pages resolve (file, and the section when one is named), Markdown links
between the pages resolve, and nothing refers to notes kept outside the repository.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# names of notes that lived outside the repository (spelled in parts so this file does not match itself)
OUTSIDE_NOTES = re.compile(
    "|".join(
        [r"ALGORITHMS\.md", r"DESIGN\.md", r"RECIPES\.md", r"CONVENTIONS\.md", r"\.\./" + "shared", "/work/" + "shared"]
    )
)
DOC_REF = re.compile(r"""docs/([\w/.-]+\.md),? ?(?:"([^"]+)")?""")
MD_LINK = re.compile(r"\]\(([^)#\s]+\.md)(#[\w-]+)?\)")


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout")
    keep = (".py", ".md", ".toml", ".txt", ".cfg", ".sh", "Makefile", ".c")
    return [ROOT / f for f in out if f.endswith(keep) and (ROOT / f).is_file() and not (ROOT / f).is_symlink()]


def _headings(page: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("#")]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_nothing_refers_to_notes_outside_the_repository():
    hits = []
    for path in _tracked_text_files():
        for no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE_NOTES.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{no}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)


def test_every_docs_reference_names_an_existing_page_and_section():
    missing = []
    for path in _tracked_text_files():
        for no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for m in DOC_REF.finditer(line):
                page = ROOT / "docs" / m.group(1)
                if not page.is_file():
                    missing.append(f"{path.relative_to(ROOT)}:{no}: docs/{m.group(1)} does not exist")
                elif m.group(2) and not any(h.startswith(m.group(2)) for h in _headings(page)):
                    missing.append(f"{path.relative_to(ROOT)}:{no}: docs/{m.group(1)} has no section {m.group(2)!r}")
    assert not missing, "\n".join(missing)


def test_markdown_links_between_pages_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for m in MD_LINK.finditer(page.read_text(encoding="utf-8")):
            target = (page.parent / m.group(1)).resolve()
            if not target.is_file():
                broken.append(f"{page.relative_to(ROOT)}: {m.group(1)}")
            elif m.group(2) and m.group(2)[1:] not in {_anchor(h) for h in _headings(target)}:
                broken.append(f"{page.relative_to(ROOT)}: {m.group(1)}{m.group(2)}")
    assert not broken, broken


def test_the_documentation_pages_exist():
    for name in ("architecture.md", "methods.md", "benchmarks.md", "data.md"):
        assert (ROOT / "docs" / name).is_file(), name
