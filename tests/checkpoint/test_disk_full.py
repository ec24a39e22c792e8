"""A save that runs out of room says so in one line (issue: a full disk was reported as
``unexpected pos 7420096 vs 7419984`` by torch's zip writer, or ``CheckpointException
ranks:dict_keys([0, 1])`` by DCP), and the previous checkpoint stays intact.

What is tested how, with real OS write failures and no mocks:

* the file size limit: a fit in a subprocess whose ``RLIMIT_FSIZE`` drops to 1 MB (SIGXFSZ
  ignored, so writes fail with EFBIG) before its second ~2.1 MB save; and a sharded (DCP) save
  on 2 gloo ranks under the same limit;
* ENOSPC on a real file system: the same fit, then a sharded save, on a 3 MB tmpfs mounted in a
  user + mount namespace (``unshare -Urm``; skipped where the kernel does not allow one);
* ENOSPC where no namespace is allowed: ``torch.save`` into ``/dev/full`` (every write there fails
  with ENOSPC; no checkpoint folder can be made there, so the detection is checked on the error
  torch raises), which maps back to ENOSPC; an error on a disk with room is left as it was.
"""
from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from tests.helpers import run_ranks

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "disk_full.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1",
       "PYTHONWARNINGS": "ignore::UserWarning:torch.distributed.checkpoint.utils"}


def _run(cmd: list[str]) -> dict:
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _previous_kept(out: dict) -> None:
    assert out["files"] == ["epoch=0-step=2.ckpt", "last.json"], out  # no partial or temporary file
    assert out["last"] == "epoch=0-step=2.ckpt" and out["last_ok"], out


def test_file_size_limit_mid_fit_is_one_line_and_the_previous_checkpoint_stays(tmp_path):
    out = _run([sys.executable, SCRIPT, str(tmp_path), "fsize"])
    assert re.fullmatch(r"CheckpointError: the file size limit \(1\.0 MB, ulimit -f\) was hit while writing "
                        + re.escape(str(tmp_path / "checkpoints" / "epoch=1-step=4.ckpt"))
                        + r": the checkpoint needed about 2\.1 MB; .*", out["fit"]), out["fit"]
    assert "\n" not in out["fit"]
    _previous_kept(out)


def _namespaces_allowed() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt || "
                            "mount -t tmpfs -o size=1m tmpfs /tmp"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _namespaces_allowed(), reason="no unprivileged user + mount namespace for a small tmpfs")
def test_no_space_left_on_a_real_file_system(tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    out = _run(["unshare", "-Urm", "sh", "-c", f'mount -t tmpfs -o size=3m tmpfs "{folder}" && '
                f'exec "{sys.executable}" "{SCRIPT}" "{folder}" enospc'])
    where = f"no space left on {folder} (tmpfs) while writing "
    assert re.fullmatch(r"CheckpointError: " + re.escape(where + str(folder / "checkpoints" / "epoch=1-step=4.ckpt"))
                        + r": the checkpoint needed about 2\.1 MB, (0\.9|1\.0) MB free; .*", out["fit"]), out["fit"]
    _previous_kept(out)
    assert re.fullmatch(r"CheckpointError: " + re.escape(where + str(folder / "sharded.ckpt"))
                        + r": the checkpoint needed about 2\.0 MB, 0\.\d MB free; .*", out["sharded"]), out["sharded"]
    assert not out["sharded_left"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_enospc_from_dev_full_is_told_apart_from_other_write_errors(tmp_path):
    from distengine.checkpoint.write_failures import disk_cause, message

    with pytest.raises(RuntimeError, match="unexpected pos") as caught:  # what torch says: no errno left
        torch.save({"w": torch.zeros(100_000)}, "/dev/full")
    assert disk_cause(caught.value, "/dev/full") == errno.ENOSPC
    line = message(errno.ENOSPC, "/dev/full", 400_000, 0)
    assert line.startswith("no space left on /dev") and "needed about 0.4 MB, 0.0 MB free" in line
    with pytest.raises(OSError) as python_level:  # a Python-level write keeps its errno in the chain
        with open("/dev/full", "wb", buffering=0) as f:
            f.write(b"x")
    assert disk_cause(RuntimeError("wrapped"), str(tmp_path)) is None
    wrapped = RuntimeError("a save failed")
    wrapped.__cause__ = python_level.value
    assert disk_cause(wrapped, str(tmp_path)) == errno.ENOSPC
    partial = tmp_path / "partial"
    partial.write_bytes(b"x" * 100)
    assert disk_cause(caught.value, str(partial)) is None  # room on this disk: not a disk-full error


def _sharded_save_over_the_limit(rank: int, folder: str) -> dict:
    import torch.distributed as dist

    from distengine.checkpoint.io import CheckpointError
    from distengine.checkpoint.sharded import ShardedCheckpointer, load_consolidated

    dist.init_process_group("gloo")
    path = os.path.join(folder, "model.ckpt")
    ckpt = ShardedCheckpointer()
    ckpt.save(path, {"state_dict": {f"w{rank}": torch.full((10,), float(rank))}}, meta={"global_step": 1})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))
    try:
        ckpt.save(path, {"state_dict": {f"w{rank}": torch.zeros(500_000)}}, meta={"global_step": 2})
        error = None
    except CheckpointError as exc:
        error = str(exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    dist.barrier()
    kept = load_consolidated(path) if rank == 0 else None
    return {"error": error, "step": kept and kept["global_step"], "w1": kept and kept["state_dict"]["w1"].tolist()}


def test_sharded_save_over_the_file_size_limit_on_two_ranks(tmp_path):
    found = run_ranks(_sharded_save_over_the_limit, 2, str(tmp_path), timeout=90,
                      env={"PYTHONWARNINGS": ENV["PYTHONWARNINGS"]})
    for rank, out in enumerate(found):
        assert out["error"] is not None and out["error"].startswith(
            f"the file size limit (1.0 MB, ulimit -f) was hit while writing {tmp_path / 'model.ckpt'}: "
            "the checkpoint needed about 4.0 MB;"), (rank, out)
    assert found[0]["step"] == 1 and found[0]["w1"] == [1.0] * 10  # the previous checkpoint, intact
