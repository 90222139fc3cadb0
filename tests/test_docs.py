"""Every file the README, docs/ and the code point to exists, and nothing points outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_DIRS = "docs|benchmarks|scripts|python|tools|tests|csrc|gpaco_kernels|\\.ci"
# A repository path in prose or code: a top-level folder, then names, then a file extension.
PATH = re.compile(rf"(?<![\w./-])((?:{TOP_DIRS})/[\w./-]*\.(?:md|py|sh|cpp|h|json|jsonl|png|txt|toml))\b")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
# Design notes that live outside the repository (in the team's shared folder): users cannot open them.
OUTSIDE = re.compile(r"loss-spec\.md|(?<![\w-])kernels\.md|architecture\.md|(?<![\w-])style\.md|shared/design")


def tracked_files():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    text_like = {".md", ".py", ".sh", ".cpp", ".h", ".toml", ".txt", ".cfg", ""}
    for name in out.splitlines():
        path = ROOT / name
        if path.suffix in text_like and path.is_file() and "results" not in path.parts:
            yield path


FILES = sorted(tracked_files())


def test_the_scan_sees_the_docs_and_the_code():
    names = {p.relative_to(ROOT).as_posix() for p in FILES}
    assert {"README.md", "docs/loss-contract.md", "gpaco_kernels/functional.py", "Makefile"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_referenced_files_exist(path):
    text = path.read_text(errors="replace")
    # From the repository's root, or from the file's own folder (csrc/README.md names csrc/tests/... as tests/...).
    missing = [ref for ref in PATH.findall(text) if not any((base / ref).exists() for base in (ROOT, path.parent))]
    if path.suffix == ".md":
        for link in MD_LINK.findall(text):
            target = link.split("#")[0]
            if target and "://" not in target and not target.startswith("mailto:"):
                if not (path.parent / target).exists() and not (ROOT / target).exists():
                    missing.append(link)
    assert not missing, f"{path.relative_to(ROOT)} points to files that do not exist: {sorted(set(missing))}"
    outside = OUTSIDE.findall(text)
    assert not outside or path.name == "test_docs.py", f"{path.relative_to(ROOT)} cites notes outside the repository"


def test_the_readme_leads_with_the_drop_ins():
    """A front door, not a lab notebook: at most 250 lines, the drop-ins by line 80, and every other table in docs/
    (benchmarks/report.py's DOCUMENTS says which file each generated table lives in, and --check holds them to it)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, len(lines)
    drop_ins = next(i for i, line in enumerate(lines, 1) if line.startswith("## Drop-ins"))
    assert drop_ins <= 80, drop_ins
    from benchmarks.report import DOCUMENTS

    for name, blocks in DOCUMENTS.items():
        text = (ROOT / name).read_text()
        for block in blocks:
            assert f"<!-- {block}:begin -->" in text and f"<!-- {block}:end -->" in text, (name, block)
