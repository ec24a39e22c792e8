"""Checkpoint files and folders follow the process umask, as a plain ``open()`` would (issue:
checkpoints were created 0600 by ``tempfile.mkstemp`` whatever the umask, so teammates on a
shared file system could not read them).

The save runs in a subprocess (the umask is per process) and writes every kind of file the
engine creates: single-file checkpoints, ``last.ckpt``, ``last.json``, ``hparams.yaml``, the
logger's version folder and ``checkpoints`` folder, a sharded (DCP) directory with its shards,
``.metadata``, ``meta.pt`` and ``checksums.json``. Every file must be ``0666 & ~umask`` and every
directory ``0777 & ~umask``."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "umask_save.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_checkpoint_files_and_folders_follow_the_umask(tmp_path, umask):
    root = tmp_path / "run"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, SCRIPT, oct(umask), str(root)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    wrong, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                continue  # last.ckpt of the sharded folder: a symbolic link (its mode means nothing)
            want = (0o777 if stat.S_ISDIR(st.st_mode) else 0o666) & ~umask
            seen.add(name)
            if stat.S_IMODE(st.st_mode) != want:
                wrong.append(f"{os.path.relpath(full, root)}: {oct(stat.S_IMODE(st.st_mode))}, want {oct(want)}")
    assert not wrong, wrong
    for expected in ("version_0", "checkpoints", "epoch=0-step=1.ckpt", "last.ckpt", "last.json", "hparams.yaml",
                     "metrics.csv", "meta.pt", ".metadata", "__0_0.distcp", "checksums.json"):
        assert expected in seen, f"{expected} was not written: {sorted(seen)}"
