"""The repository carries its own sources: no file cites a document the repository does not hold.

Facts from the papers and the authors' repositories live in docs/sources.md; every other file cites that
page (or another file of the repository). This test fails on a citation of a private or external notes file
and on a ``docs/<name>.md`` reference or a relative Markdown link whose target is missing.
"""

import re
import subprocess

import pytest

from medkd.config import REPO_ROOT

# Built by concatenation so that this file does not match itself.
FORBIDDEN = ["papers" + ".md", "reference" + "/", ".." + "/shared", "DESIGN" + ".md"]
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".smk", ".rst", ".toml", ".cfg", ".txt", ".json", ".sh", ""}
DOC_REF = re.compile(r"(?<![\w/.])docs/([\w.-]+\.md)")
MD_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def tracked_text_files():
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
        names = out.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an sdist): walk the tree
        names = [str(p.relative_to(REPO_ROOT)) for p in REPO_ROOT.rglob("*") if p.is_file()
                 and not any(part.startswith(".") or part in {"results", "data"} for part in p.relative_to(REPO_ROOT).parts)]
    for name in names:
        path = REPO_ROOT / name
        if name.startswith("data/") or not path.is_file() or path.suffix not in TEXT_SUFFIXES:
            continue
        try:
            yield name, path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue


FILES = dict(tracked_text_files())


def test_sources_page_exists():
    text = (REPO_ROOT / "docs" / "sources.md").read_text()
    for section in ("## 1.", "## 2. MTMS", "## 3. KD-MRI", "## 4. TeachFormer", "## 5. P-CD"):
        assert section in text


@pytest.mark.parametrize("needle", FORBIDDEN)
def test_no_citation_of_documents_outside_the_repository(needle):
    offenders = [f"{name}:{i + 1}" for name, text in FILES.items()
                 for i, line in enumerate(text.splitlines()) if needle in line]
    assert not offenders, f"{needle!r} cited (cite docs/sources.md instead): {offenders}"


def test_every_cited_doc_exists():
    missing = []
    for name, text in FILES.items():
        for m in DOC_REF.finditer(text):
            if not (REPO_ROOT / "docs" / m.group(1)).is_file():
                missing.append(f"{name}: docs/{m.group(1)}")
    assert not missing, f"cited docs that do not exist: {missing}"


def test_relative_markdown_links_resolve():
    missing = []
    for name, text in FILES.items():
        if not name.endswith(".md"):
            continue
        base = (REPO_ROOT / name).parent
        for m in MD_LINK.finditer(text):
            target = m.group(1)
            if re.match(r"^[a-z]+:", target) or target.startswith("/"):
                continue
            if not (base / target).exists():
                missing.append(f"{name}: {target}")
    assert not missing, f"broken relative links: {missing}"


def test_the_scan_catches_a_bad_citation(tmp_path):
    text = "see " + FORBIDDEN[0] + " and docs/" + "nonexistent_page.md"
    assert any(n in text for n in FORBIDDEN)
    assert [m.group(1) for m in DOC_REF.finditer(text)] == ["nonexistent_page.md"]
