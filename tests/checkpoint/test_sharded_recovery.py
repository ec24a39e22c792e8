"""Sharded checkpoints (directories) and crashes: every crash point of a publish that reuses a
name, leftovers in older version folders, a full-file save onto a directory of the same name
(and back), damaged shards (checksums, fallback, one-line errors).

The jobs are real processes (tests/checkpoint/scripts/sharded_crash.py, one rank, the strategy's
checkpoint_layout set to "sharded"); ``DISTENGINE_TEST_CRASH=<point>:<n>`` SIGKILLs the job at
a crash point of ``sharded._publish``.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "sharded_crash.py")


def _job(root, *args, crash: str | None = None, expect: int = 0) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update({"PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
                "PYTHONWARNINGS": "ignore::UserWarning:torch.distributed.checkpoint.utils"})
    env.pop("DISTENGINE_TEST_CRASH", None)
    if crash:
        env["DISTENGINE_TEST_CRASH"] = crash
    proc = subprocess.run([sys.executable, SCRIPT, "--root", str(root), *map(str, args)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240)
    assert proc.returncode == expect, f"exited {proc.returncode}, expected {expect}:\n{proc.stdout[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded_base")
    _job(root, "--steps", 4, "--out", root / "final.pt")
    return torch.load(root / "final.pt")


# (crash point, the publish at which it fires): the first save (step 1) finds no model.ckpt, so
# the points around the old directory first fire at the second save; the others fire at every one
CRASH_POINTS = [("before-move-old", 2), ("after-move-old", 1), ("before-rename", 2), ("after-rename", 2),
                ("before-delete", 1), ("after-delete", 1)]


@pytest.mark.parametrize("point,nth", CRASH_POINTS, ids=[p for p, _ in CRASH_POINTS])
def test_crash_at_every_point_of_a_publish_that_reuses_the_name(tmp_path, baseline, point, nth):
    """SIGKILL at each step of the second save of ``model.ckpt`` (step 2, while step 1's is in
    place): the resume finds the complete step-2 checkpoint (all shards were written before the
    publish began), loads it, ends like the uninterrupted run and leaves no leftovers."""
    _job(tmp_path, "--steps", 4, crash=f"{point}:{nth}", expect=-signal.SIGKILL)
    ckpts = tmp_path / "checkpoints"
    leftovers = sorted(n for n in os.listdir(ckpts) if n.startswith(".model.ckpt."))
    assert leftovers or point in ("after-rename", "after-delete"), os.listdir(ckpts)
    out = _job(tmp_path, "--steps", 4, "--resume", "--out", tmp_path / "final.pt")
    got = torch.load(tmp_path / "final.pt")
    assert got["start"] == 2, out[-2000:]
    differ = [k for k in baseline["state_dict"] if not torch.equal(baseline["state_dict"][k], got["state_dict"][k])]
    assert not differ, f"final weights differ from the uninterrupted run in {differ}"
    assert sorted(os.listdir(ckpts)) == ["last.ckpt", "last.json", "model.ckpt"]


def test_leftovers_in_older_version_folders_are_recovered_and_cleaned(tmp_path):
    """A crash in version_0 (at the second save of model.ckpt, its shards all written), plus the
    temporary directory of a save killed mid-write (meta.pt only); resumed runs write version_1
    and version_2 (given as the logger's version: without one a resumed run goes on in version_0,
    test_resume_folder.py). The resume continues from the newest complete checkpoint (version_0's
    step 2) and no leftover stays in version_0, though only the current folder is written to."""
    _job(tmp_path, "--steps", 4, "--logger", crash="before-move-old:2", expect=-signal.SIGKILL)
    v0 = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    half = v0 / ".epoch=0-step=3.ckpt.tmp-0123456789ab"
    half.mkdir()
    shutil.copy(v0 / "model.ckpt" / "meta.pt", half / "meta.pt")  # DCP's .metadata never written
    out = _job(tmp_path, "--steps", 3, "--logger", "--version", 1, "--resume", "--out", tmp_path / "v1.pt")
    assert torch.load(tmp_path / "v1.pt")["start"] == 2, out[-2000:]
    out = _job(tmp_path, "--steps", 4, "--logger", "--version", 2, "--resume", "--out", tmp_path / "v2.pt")
    assert torch.load(tmp_path / "v2.pt")["start"] == 3, out[-2000:]
    assert sorted(os.listdir(v0)) == ["last.ckpt", "last.json", "model.ckpt"]
    assert torch.load(v0 / "model.ckpt" / "meta.pt", weights_only=True)["global_step"] == 2


@pytest.mark.parametrize("first,then", [("sharded", "full"), ("full", "sharded")])
def test_resume_under_the_other_layout_saves_over_the_same_name(tmp_path, first, then):
    """A sharded directory resumed by a full-file strategy (one process, DDP) and saved again
    under the same name: the file replaces the directory (it was IsADirectoryError at the first
    save); and a file checkpoint replaced by a directory leaves no ``.old-`` file behind."""
    _job(tmp_path, "--steps", 2, "--layout", first)
    out = _job(tmp_path, "--steps", 4, "--layout", then, "--resume", "--out", tmp_path / "final.pt")
    assert torch.load(tmp_path / "final.pt")["start"] == 2, out[-2000:]
    ckpts = tmp_path / "checkpoints"
    assert sorted(os.listdir(ckpts)) == ["last.ckpt", "last.json", "model.ckpt"]
    assert os.path.isdir(ckpts / "model.ckpt") == (then == "sharded")
    out = _job(tmp_path, "--steps", 5, "--layout", first, "--resume", "--out", tmp_path / "back.pt")
    assert torch.load(tmp_path / "back.pt")["start"] == 4, out[-2000:]
    assert sorted(os.listdir(ckpts)) == ["last.ckpt", "last.json", "model.ckpt"]


def test_directory_moved_aside_for_a_file_is_put_back_after_a_crash(tmp_path):
    """The state a crash leaves between moving the directory aside and renaming the new file in
    (the file's temporary is removed as stale): the directory is renamed back and resumed."""
    _job(tmp_path, "--steps", 2)
    ckpts = tmp_path / "checkpoints"
    os.rename(ckpts / "model.ckpt", ckpts / ".model.ckpt.old-0badf00d")
    out = _job(tmp_path, "--steps", 3, "--layout", "full", "--resume", "--out", tmp_path / "final.pt")
    assert torch.load(tmp_path / "final.pt")["start"] == 2, out[-2000:]
    assert sorted(os.listdir(ckpts)) == ["last.ckpt", "last.json", "model.ckpt"]


def test_copy_of_last_ckpt_moved_aside_is_removed_once_the_link_is_back(tmp_path):
    """link_atomic's ``.last.ckpt.tmp-old-<id>`` (a real directory left by ``cp -rL``, moved aside
    for the link): a leftover once ``last.ckpt`` is a link to a complete checkpoint again."""
    from distengine.checkpoint.sharded import recover_interrupted_saves

    _job(tmp_path, "--steps", 1)
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(ckpts / "model.ckpt", ckpts / ".last.ckpt.tmp-old-0badf00d")
    assert recover_interrupted_saves(ckpts) == [("removed", str(ckpts / ".last.ckpt.tmp-old-0badf00d"))]
    assert sorted(os.listdir(ckpts)) == ["last.ckpt", "last.json", "model.ckpt"]
