"""No tracked text file carries an unresolved merge conflict.

A merge once left `<<<<<<< HEAD` / `=======` / `>>>>>>> branch` in docs/WORKFLOW.md, where users
learn the workflow; nothing noticed. This test reads every file git tracks and names each marker
line. In Markdown, fenced code blocks are skipped, so a document may still show what a conflict
looks like.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^(<<<<<<< |>>>>>>> |=======$)")
FENCE = re.compile(r"^\s*(```|~~~)")


def markers_in(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of every conflict marker in `path`; binary files have none."""
    data = path.read_bytes()
    if b"\0" in data:
        return []
    text = data.decode("utf-8", errors="replace")
    fenced, markdown, found = False, path.suffix.lower() in (".md", ".markdown"), []
    for number, line in enumerate(text.splitlines(), start=1):
        if markdown and FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced and MARKER.match(line):
            found.append((number, line))
    return found


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def test_no_tracked_file_holds_a_conflict_marker() -> None:
    files = tracked_files()
    assert len(files) > 100, "git ls-files listed too few files: is this a checkout?"
    problems = [f"{path.relative_to(ROOT)}:{number}: {line}" for path in files for number, line in markers_in(path)]
    assert not problems, "unresolved merge conflict markers:\n" + "\n".join(problems)


def test_a_planted_marker_is_found(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Title\n```\n<<<<<<< HEAD\nshown as an example\n=======\n>>>>>>> other\n```\n"
        "text\n<<<<<<< HEAD\nours\n=======\ntheirs\n>>>>>>> branch\n",
        encoding="utf-8",
    )
    assert [n for n, _ in markers_in(doc)] == [9, 11, 13]
    code = tmp_path / "x.py"
    code.write_text("a = 1\n=======\nheading = '======='\n", encoding="utf-8")
    assert markers_in(code) == [(2, "=======")]
