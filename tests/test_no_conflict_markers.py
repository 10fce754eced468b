"""No tracked file holds an unresolved merge conflict: a `<<<<<<< ` line followed by a `>>>>>>> ` line.

A lone `=======` is not looked at (it is also a legitimate reStructuredText / Markdown heading
underline); git writes the two outer markers at the start of a line, seven characters and a space.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPEN, CLOSE = "<" * 7 + " ", ">" * 7 + " "  # written so, this file does not hold the markers itself


def conflicts(text: str) -> list[int]:
    """1-based line numbers of each opening marker that a closing marker follows."""
    found, start = [], None
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith(OPEN):
            start = number
        elif line.startswith(CLOSE) and start is not None:
            found.append(start)
            start = None
    return found


def test_the_finder_sees_a_conflict_and_not_an_underline():
    assert conflicts(f"a\n{OPEN}HEAD\nx\n=======\ny\n{CLOSE}main\n") == [2]
    assert conflicts("Title\n=======\n\ntext\n") == []


def test_no_tracked_file_holds_conflict_markers():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    bad = []
    for name in filter(None, files.decode().split("\0")):
        path = REPO / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # binary: figures, checkpoints
            continue
        bad += [f"{name}:{n}" for n in conflicts(text)]
    assert bad == [], f"unresolved merge conflicts at {bad}"
