"""Size limits that keep the library readable (issue 11): trainer.py under 300 lines, no
library file over 500 lines, no function over 80 lines (distengine/, its launch/ and slurm/ included)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_FILE, MAX_FUNCTION, MAX_TRAINER = 500, 80, 300


def _sources() -> list[Path]:
    return sorted(p for d in ("distengine",) for p in (ROOT / d).rglob("*.py"))


def test_files_and_functions_stay_small():
    too_long = []
    for path in _sources():
        text = path.read_text()
        lines = len(text.splitlines())
        name = path.relative_to(ROOT)
        if lines > MAX_FILE:
            too_long.append(f"{name}: {lines} lines (> {MAX_FILE})")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION:
                    too_long.append(f"{name}:{node.lineno} {node.name}() is {n} lines (> {MAX_FUNCTION})")
    trainer = len((ROOT / "distengine" / "trainer.py").read_text().splitlines())
    if trainer >= MAX_TRAINER:
        too_long.append(f"distengine/trainer.py: {trainer} lines (>= {MAX_TRAINER})")
    assert len(_sources()) > 50 and not too_long, "split these:\n" + "\n".join(too_long)
