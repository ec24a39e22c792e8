"""The documentation site: it builds with ``mkdocs build --strict`` (no broken link, anchor or API
reference), and every code block marked runnable in docs/ runs and exits 0.

A runnable block is a fenced ``python`` block right after an HTML comment (invisible on the site):

    <!-- runnable -->                          runs as: python <block>.py
    <!-- runnable: distengine launch --cpus 2 -->  runs as: distengine launch --cpus 2 <block>.py

Each runs in its own temporary folder, in a subprocess with a timeout. docs/development.md
describes the convention; docs/incoming/ (other branches' notes, not yet in the site) is skipped.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^<!-- runnable(?::\s*(?P<cmd>[^>]*?))?\s*-->\n```python[^\n]*\n(?P<code>.*?)^```", re.M | re.S)
TIMEOUT = 90


def runnable_blocks() -> list[tuple[str, str, str]]:
    """(id, command prefix, code) of every runnable block of the site's pages."""
    out = []
    for page in sorted(DOCS.rglob("*.md")):
        rel = page.relative_to(DOCS)
        if rel.parts[0] == "incoming":
            continue
        text = page.read_text()
        for i, m in enumerate(BLOCK.finditer(text)):
            line = text.count("\n", 0, m.start()) + 1
            out.append((f"{rel}:{line}", (m.group("cmd") or "python").strip(), m.group("code")))
    return out


def _mkdocs() -> str:
    exe = Path(sys.executable).parent / "mkdocs"
    if not exe.exists():
        pytest.fail("mkdocs is not installed in this environment: pip install -e '.[docs]' (make test does)")
    return str(exe)


def test_site_builds_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([_mkdocs(), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                       capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "index.html").exists()
    assert not (tmp_path / "site" / "incoming").exists(), "docs/incoming/ must stay out of the site"


def test_markers_are_found():
    """The pages promise runnable quickstart and FSDP examples: a typo in the marker must not
    silently turn the check off."""
    ids = [b[0] for b in runnable_blocks()]
    assert any(i.startswith("quickstart.md") for i in ids), ids
    assert any(i.startswith("fsdp.md") for i in ids), ids
    stray = [p for p in DOCS.rglob("*.md") if "incoming" not in p.parts
             and len(re.findall(r"^<!-- runnable", p.read_text(), re.M)) != len(BLOCK.findall(p.read_text()))]
    assert not stray, f"a '<!-- runnable' marker not directly followed by a ```python block in {stray}"


@pytest.mark.parametrize("block", runnable_blocks(), ids=lambda b: b[0])
def test_runnable_block(block, tmp_path):
    where, cmd, code = block
    script = tmp_path / "example.py"
    script.write_text(code)
    argv = cmd.split()
    if argv[0] == "python":
        argv[0] = sys.executable
    elif argv[0] == "distengine":
        argv = [sys.executable, "-m", "distengine.launch", *argv[2:]] if argv[1:2] == ["launch"] else argv
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([*argv, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert r.returncode == 0, f"{where} ({cmd}) exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_readme_shows_the_commands():
    """.ci/run runs `make test`; the README must show it (and make demo / make test-fast), and
    point into the site rather than hold it."""
    readme = (ROOT / "README.md").read_text()
    for command in ("make demo", "make test", "make test-fast", "make docs"):
        assert command in readme, command
    assert len(readme.splitlines()) < 260, "README.md is the front page; put the details in docs/"
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).exists(), f"README links to a missing page {link}"


def test_performance_table_is_generated_from_the_results():
    """docs/performance.md holds ONE table, the newest results file of each benchmark; a new
    file in benchmarks/results/ without a regenerated page fails here."""
    from benchmarks import docs_table

    assert docs_table.current() == docs_table.render(), \
        "docs/performance.md is stale: run python -m benchmarks.docs_table --write"
    page = docs_table.PAGE.read_text()
    assert page.count("| benchmark | comparison |") == 1, \
        "one performance table only; history goes to benchmarks/results/"
