"""The repository is self-contained: no tracked file cites a document or path outside it, and every
`docs/...` page that a file cites exists (the facts the code relies on live in docs/)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve().relative_to(REPO).as_posix()

# What used to be cited from beside the repository: the shared folder, the design / convention files
# and the research notes (their topics now live in docs/design.md, docs/ray.md, docs/pose-reference.md).
OUTSIDE = re.compile(
    r"\.\./shared|/work/|shared/(?:notes|paper)|\bnotes/[\w-]+\.md|DESIGN\.md|CONVENTIONS\.md|object-store\.md"
)
DOCS_CITATION = re.compile(r"(?<![\w/.-])docs/([\w-]+\.md)")
NOTE_NAMES = re.compile(r"(?<![\w/.-])(ray|pose-reference|performance|design|architecture)\.md")


def _tracked_text_files() -> dict[str, str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc}): the tracked files cannot be listed")
    texts = {}
    for name in filter(None, out.split("\0")):
        path = REPO / name
        if name == SELF or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (a figure)
        texts[name] = data.decode("utf-8", errors="replace")
    return texts


def _hits(pattern: re.Pattern, texts: dict[str, str]) -> list[str]:
    return [
        f"{name}:{i}: {line.strip()}"
        for name, text in texts.items()
        for i, line in enumerate(text.splitlines(), 1)
        if pattern.search(line)
    ]


def test_no_tracked_file_cites_a_path_outside_the_repository():
    hits = _hits(OUTSIDE, _tracked_text_files())
    assert not hits, "cites a path outside the repository (move the fact into docs/):\n" + "\n".join(hits)


def test_every_cited_docs_page_exists():
    texts = _tracked_text_files()
    missing = [
        f"{name}: docs/{page}"
        for name, text in texts.items()
        for page in DOCS_CITATION.findall(text)
        if f"docs/{page}" not in texts
    ]
    assert not missing, "cites a docs page that is not in the repository:\n" + "\n".join(missing)


def test_notes_are_cited_by_their_docs_path():
    """Outside docs/, a page such as `ray.md` is named with its folder (`docs/ray.md`), so a citation
    cannot silently mean a file beside the repository; inside docs/, a bare name is a sibling page."""
    texts = _tracked_text_files()
    bad = []
    for name, text in texts.items():
        for i, line in enumerate(text.splitlines(), 1):
            for page in NOTE_NAMES.findall(line):
                inside_docs = name.startswith("docs/") and f"docs/{page}.md" in texts
                if not inside_docs:
                    bad.append(f"{name}:{i}: {page}.md")
    assert not bad, "names a notes page without its docs/ path:\n" + "\n".join(bad)


def test_the_checks_see_an_outside_citation():
    """The patterns catch the citations they exist for (a check that cannot fail checks nothing)."""
    sample = {"x.py": "# see ../shared/notes/ray.md §3 and DESIGN.md §4\n", "y.py": "# docs/nowhere.md\n"}
    assert len(_hits(OUTSIDE, sample)) == 1
    assert DOCS_CITATION.findall(sample["y.py"]) == ["nowhere.md"]
    assert NOTE_NAMES.findall("(ray.md §3c)") == ["ray"] and not NOTE_NAMES.findall("docs/ray.md")


# "issue 18", "Issue #20": the project's own tracker, which a reader of the repository does not have.
# A public project's issue (`HRNet issue #22`, `… repository's issue #3`) is a citation and stays.
OWN_ISSUE = re.compile(r"(?<!HRNet )(?<!repository's )\b[Ii]ssue #?\d+")


def test_no_tracked_file_cites_the_projects_own_issue_numbers():
    cited = {
        f"{name}:{text[: m.start()].count(chr(10)) + 1}: {m.group(0)}"
        for name, text in _tracked_text_files().items()
        for m in OWN_ISSUE.finditer(text)
    }
    assert not cited, "say the reason instead of the issue number: " + "; ".join(sorted(cited))
