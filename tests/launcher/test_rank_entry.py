"""The rank entry point (launch/rank.py): a script runs as under plain ``python``, and ends with
its own exit status after the shutdown work a program can see (threads, atexit, open files)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.launcher.util import ROOT, SCRIPTS, clean_env

EXITS = str(SCRIPTS / "exits.py")
RANK = [sys.executable, "-m", "distengine.launch.rank"]


def _run(cmd: list[str], tmp_path, mode: str) -> tuple[subprocess.CompletedProcess, dict, dict]:
    out = subprocess.run(cmd + [EXITS, str(tmp_path), mode], env=clean_env(), cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    seen = json.loads(out.stdout.splitlines()[0])
    files = {p.name: p.read_text() for p in tmp_path.glob("*.txt")}
    return out, seen, files


@pytest.mark.parametrize("mode, status", [("return", 0), ("exit3", 3), ("message", 1), ("raise", 1)])
def test_a_script_ends_as_under_plain_python(tmp_path, mode, status):
    plain_dir, rank_dir = tmp_path / "plain", tmp_path / "rank"
    plain_dir.mkdir()
    rank_dir.mkdir()
    plain, plain_seen, plain_files = _run([sys.executable], plain_dir, mode)
    ranked, seen, files = _run(RANK, rank_dir, mode)
    assert plain.returncode == ranked.returncode == status, ranked.stderr
    assert seen == {**plain_seen, "argv": [EXITS, str(rank_dir), mode]}
    assert seen["helper"] == "exits_helper" and seen["name"] == "__main__"
    # threads joined, atexit callbacks run, an unclosed file's buffer written: as at a normal exit
    assert files == plain_files == {"atexit.txt": "ran", "thread.txt": "joined", "unclosed.txt": "buffered"}
    if mode == "message":
        assert "stopping with a message" in ranked.stderr
    if mode == "raise":  # the same traceback as plain python, without the entry point's frames
        assert ranked.stderr == plain.stderr
        assert "in fail_here" in ranked.stderr and "rank.py" not in ranked.stderr


def test_a_module_runs_as_under_python_dash_m(tmp_path):
    cmd = ["-m", "tests.launcher.scripts.exits", str(tmp_path), "return"]
    plain = subprocess.run([sys.executable, *cmd], env=clean_env(PYTHONPATH=str(SCRIPTS)), cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    ranked = subprocess.run(RANK + cmd, env=clean_env(PYTHONPATH=str(SCRIPTS)), cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert plain.returncode == ranked.returncode == 0, ranked.stderr
    assert json.loads(ranked.stdout.splitlines()[0]) == json.loads(plain.stdout.splitlines()[0])


def test_a_raising_rank_writes_a_whole_error_file_in_torchs_format(tmp_path):
    # written beside the launcher's path and renamed over it: a rank stopped mid-write leaves
    # nothing there rather than half a document (which torch's agent cannot read)
    errors, out = tmp_path / "errors", tmp_path / "out"
    errors.mkdir()
    out.mkdir()
    error_file = errors / "error_1.json"
    ran = subprocess.run(RANK + [EXITS, str(out), "raise"], env=clean_env(TORCHELASTIC_ERROR_FILE=str(error_file)),
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1, ran.stderr
    assert [p.name for p in errors.iterdir()] == ["error_1.json"]
    message = json.loads(error_file.read_text())["message"]
    assert message["message"] == "ValueError: raised on purpose"
    assert "in fail_here" in message["extraInfo"]["py_callstack"]
    assert int(message["extraInfo"]["timestamp"]) > 0
