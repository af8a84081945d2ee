"""The README as a newcomer meets it: its quick-start runs as written, and it fits on a screen.

The quick-start is the ```bash block right under the ``## Quick start`` heading. Each line is
run as written by bash, from an empty scratch folder (its first command, ``transferkit
examples``, writes the example files there), with the venv's ``bin`` first on PATH: the
``transferkit`` a reader gets after ``source .venv/bin/activate``.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 200
# [text](target) and ![alt](target); the target ends at whitespace or ")"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def quickstart_commands(text: str) -> list[str]:
    """The commands of the first ```bash block after ``## Quick start``, continuations joined."""
    match = re.search(r"^## Quick start\s*$(.*?)^```bash\n(.*?)^```", text, re.M | re.S)
    assert match, "README.md has no ```bash block under a '## Quick start' heading"
    assert "\n## " not in match.group(1), "the quick-start block must sit under its heading"
    commands: list[str] = []
    pending = ""
    for line in match.group(2).splitlines():
        line = pending + line.lstrip() if pending else line
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            commands.append(line.strip())
    assert commands, "the quick-start block is empty"
    return commands


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


def broken_links(page: Path) -> list[str]:
    """Relative links of a Markdown page whose file (or heading anchor) does not exist."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    return broken


def test_readme_fits_and_links_resolve():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines, at most {MAX_LINES}"
    pages = [README, ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert [p for p in pages if not p.is_file()] == []
    assert [b for page in pages for b in broken_links(page)] == []


def test_readme_links_check_catches_a_broken_one(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "a.md").write_text("# Top\n[ok](a.md#top) [gone](b.md) [bad](a.md#nowhere)\n"
                                   "```\n[in code](ignored.md)\n```\n[web](https://x.org/y)\n")
    assert broken_links(tmp_path / "a.md") == ["a.md: b.md (no such file)",
                                               "a.md: a.md#nowhere (no such heading)"]


def test_quickstart_block_is_parsed():
    text = "## Quick start\n\nrun:\n```bash\n# a comment\nfoo a \\\n  b\n\nbar\n```\n"
    assert quickstart_commands(text) == ["foo a b", "bar"]


@pytest.mark.slow
def test_quickstart_commands_run_as_written(tmp_path):
    commands = quickstart_commands(README.read_text(encoding="utf-8"))
    # every file the block names under examples/ is shipped in the package
    named = set(re.findall(r"examples/([\w.-]+)", " ".join(commands)))
    shipped = ROOT / "src" / "transferkit" / "examples"
    assert named and all((shipped / f).is_file() for f in named), named
    env = dict(os.environ)  # conftest's TRANSFERKIT_CACHE and HF_HUB_OFFLINE included
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (
            f"README quick-start command failed (exit {done.returncode}): {command}\n"
            f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
    # the predictions the README promises: one row per input, a label of the training classes
    n_inputs = len(list(csv.DictReader(open(tmp_path / "examples" / "new.csv",
                                            encoding="utf-8"))))
    for output in re.findall(r"--output (\S+)", " ".join(commands)):
        with open(tmp_path / output, encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == n_inputs, output
        assert {row["label"] for row in rows} <= {"ham", "spam"}, output
