"""Atomic writes survive crashes, loads refuse code, "last" falls back to a valid checkpoint."""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distengine.checkpoint.io import (
    CheckpointError,
    atomic_save,
    clean_stale_temp_files,
    is_temp_file,
    is_valid_checkpoint,
    list_checkpoints,
    read_last_pointer,
    resolve_checkpoint,
    safe_load,
    write_last_pointer,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "crash_write.py")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _assert_survivor(folder: str, path: str, version: int | tuple[int, ...]) -> None:
    """After a crash: the final name holds a complete old checkpoint, nothing else is final."""
    state = safe_load(path)
    assert state["version"] in ((version,) if isinstance(version, int) else version)
    assert torch.equal(state["w"], torch.arange(1000))
    finals = [n for n in os.listdir(folder) if not is_temp_file(n)]
    assert sorted(finals) == sorted([os.path.basename(path), "last.json"]), finals
    assert list_checkpoints(folder) == [path]
    assert resolve_checkpoint("last", folder) == path
    # resolving also cleans up what a dead writer on this host left behind
    assert not [n for n in os.listdir(folder) if is_temp_file(n)]


@pytest.mark.parametrize("limit", [0, 300, 600_000])
def test_crash_at_a_byte_keeps_previous_checkpoint(tmp_path, limit):
    path = str(tmp_path / "model.ckpt")
    proc = subprocess.run([sys.executable, SCRIPT, path, "xfsz", str(limit)], env=_child_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGXFSZ, (proc.returncode, proc.stderr)
    temps = [n for n in os.listdir(tmp_path) if is_temp_file(n)]
    assert len(temps) == 1  # the torn write stays under a temporary name
    assert os.path.getsize(tmp_path / temps[0]) <= limit
    assert clean_stale_temp_files(tmp_path / "elsewhere") == []
    _assert_survivor(str(tmp_path), path, 1)


def test_crash_after_write_before_rename(tmp_path):
    path = str(tmp_path / "model.ckpt")
    proc = subprocess.run([sys.executable, SCRIPT, path, "fsync"], env=_child_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    _assert_survivor(str(tmp_path), path, 1)


def test_sigkill_during_repeated_writes(tmp_path):
    path = str(tmp_path / "model.ckpt")
    proc = subprocess.Popen([sys.executable, SCRIPT, path, "loop"], env=_child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 40
        killed_mid_write = False
        while time.monotonic() < deadline and not killed_mid_write:
            for name in os.listdir(tmp_path):
                if is_temp_file(name):
                    try:
                        size = os.path.getsize(tmp_path / name)
                    except FileNotFoundError:
                        continue
                    if 0 < size < (64 << 20):  # part of the 64 MiB tensor is on disk
                        proc.send_signal(signal.SIGKILL)
                        killed_mid_write = True
                        break
        assert killed_mid_write, "never saw a write in progress"
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _assert_survivor(str(tmp_path), path, (1, 2))


def test_failed_write_leaves_no_temp_file(tmp_path):
    path = tmp_path / "a.ckpt"
    atomic_save({"x": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_save({"x": Unpicklable()}, path)
    assert os.listdir(tmp_path) == ["a.ckpt"]
    assert safe_load(path) == {"x": 1}


class _CreatesFile:
    """Unpickling this calls open(target, "w"): arbitrary code a checkpoint must never run."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("fmt", ["zip", "legacy_pickle"])
def test_malicious_checkpoint_is_refused_without_running_code(tmp_path, fmt):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"w": torch.zeros(2)}, "hook": _CreatesFile(str(target))}
    if fmt == "zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(CheckpointError, match="refused as unsafe.*not plain data") as info:
        safe_load(path)
    assert str(path) in str(info.value)
    assert "corrupt" not in str(info.value)
    assert not target.exists()
    assert not is_valid_checkpoint(path)
    assert not target.exists()
    # the payload is real: an unsafe load would have created the file
    if fmt == "zip":
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as f:
            pickle.load(f)
    assert target.exists()


@pytest.mark.parametrize("keep", [0, 10, 0.5, -10])
def test_truncated_file_error_names_it(tmp_path, keep):
    path = tmp_path / "epoch=0-step=3.ckpt"
    atomic_save({"w": torch.randn(4096), "step": 3}, path)
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        safe_load(path)
    assert str(path) in str(info.value)
    assert not is_valid_checkpoint(path)


def test_device_errors_are_not_called_corruption(tmp_path):
    path = tmp_path / "a.ckpt"
    atomic_save({"w": torch.zeros(3)}, path)
    with pytest.raises(RuntimeError) as info:
        safe_load(path, map_location="no_such_device:0")
    assert not isinstance(info.value, CheckpointError)
    assert "corrupt" not in str(info.value)


def test_legacy_format_is_checked_by_a_full_load(tmp_path):
    path = tmp_path / "legacy.ckpt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    assert is_valid_checkpoint(path)
    assert torch.equal(safe_load(path)["w"], torch.ones(2))


def _spy_torch_load(monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(torch, "load", spy)
    return calls


def _mapped_from(tensor: torch.Tensor, path) -> bool:
    """True when ``tensor``'s bytes lie in a memory mapping of the file ``path`` (Linux)."""
    real, ptr = os.path.realpath(path), tensor.untyped_storage().data_ptr()
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith(real):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if lo <= ptr < hi:
                    return True
    return False


def test_full_checkpoint_is_loaded_memory_mapped_when_asked_and_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "a.ckpt"
    atomic_save({"state_dict": {"w": torch.arange(6.0)}, "optimizer_states": [{"m": torch.ones(3)}],
                 "step": 3}, path)
    calls = _spy_torch_load(monkeypatch)
    state = safe_load(path, mmap=True)
    assert torch.equal(state["state_dict"]["w"], torch.arange(6.0)) and state["step"] == 3
    assert [(c.get("mmap"), c.get("weights_only")) for c in calls] == [(True, True)], \
        "one load, memory-mapped (tensor bytes not copied up front), still weights_only"
    assert _mapped_from(state["state_dict"]["w"], path), "the weights stay mapped"
    assert not _mapped_from(state["optimizer_states"][0]["m"], path), "anything kept for long is copied"
    assert torch.equal(state["optimizer_states"][0]["m"], torch.ones(3))
    calls.clear()
    plain = safe_load(path)  # the default reads the file: it may be edited and saved back in place
    assert [c.get("mmap") for c in calls] == [None] and not _mapped_from(plain["state_dict"]["w"], path)
    torch.save(plain, path)
    calls.clear()
    assert is_valid_checkpoint(path) and [c.get("mmap") for c in calls] == [True]


def test_legacy_and_unsafe_files_load_as_before_without_mmap(tmp_path, monkeypatch):
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    unsafe = tmp_path / "evil.ckpt"
    torch.save({"hook": _CreatesFile(str(tmp_path / "pwned"))}, unsafe)
    calls = _spy_torch_load(monkeypatch)
    assert torch.equal(safe_load(legacy, mmap=True)["w"], torch.ones(2))
    assert [c.get("mmap") for c in calls] == [None], "a legacy file cannot be mapped: one plain load"
    calls.clear()
    with pytest.raises(CheckpointError, match="refused as unsafe"):
        safe_load(unsafe, mmap=True)
    assert all(c.get("weights_only") is True for c in calls) and calls[0].get("mmap") is True
    assert not (tmp_path / "pwned").exists()


def test_deep_check_finds_flipped_tensor_bytes(tmp_path):
    path = tmp_path / "a.ckpt"
    atomic_save({"w": torch.zeros(4096)}, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor bytes: torch.load alone does not notice
    path.write_bytes(bytes(data))
    assert is_valid_checkpoint(path)
    assert not is_valid_checkpoint(path, deep=True)


def test_missing_and_non_dict(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        safe_load(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "nope.ckpt"), tmp_path)
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        safe_load(tmp_path / "list.ckpt")


def test_last_pointer_round_trip_is_relative(tmp_path):
    folder = tmp_path / "ckpts"
    atomic_save({"a": 1}, folder / "x.ckpt")
    assert read_last_pointer(folder) is None
    write_last_pointer(folder, folder / "x.ckpt")
    assert json.loads((folder / "last.json").read_text())["path"] == "x.ckpt"
    assert not os.path.islink(folder / "last.json")
    moved = tmp_path / "moved"
    os.rename(folder, moved)
    assert read_last_pointer(moved) == str(moved / "x.ckpt")
    assert resolve_checkpoint("last", moved) == str(moved / "x.ckpt")


def _save_series(folder, n):
    paths = []
    for i in range(n):
        p = folder / f"step={i}.ckpt"
        atomic_save({"step": i, "w": torch.full((8,), float(i))}, p)
        os.utime(p, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))  # strictly increasing mtimes
        paths.append(str(p))
    write_last_pointer(folder, paths[-1])
    return paths


def test_last_resolves_to_pointer_and_none_when_empty(tmp_path):
    assert resolve_checkpoint("last", tmp_path / "never-created") is None
    assert resolve_checkpoint("last", tmp_path) is None
    assert resolve_checkpoint(None, tmp_path) is None
    paths = _save_series(tmp_path, 3)
    # the pointer wins over modification times
    write_last_pointer(tmp_path, paths[1])
    assert resolve_checkpoint("last", tmp_path) == paths[1]


@pytest.mark.parametrize("damage", ["truncate", "delete", "garbage"])
def test_last_falls_back_to_newest_valid(tmp_path, damage):
    paths = _save_series(tmp_path, 3)
    newest = paths[-1]
    if damage == "truncate":
        data = Path(newest).read_bytes()
        Path(newest).write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        os.remove(newest)
    else:
        Path(newest).write_bytes(b"\0" * 100)
    # a stray temp file and a non-checkpoint file must be ignored
    (tmp_path / ".step=9.ckpt.otherhost.1.abc.tmp").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.warns(UserWarning, match="resuming from the newest valid checkpoint") as rec:
        got = resolve_checkpoint("last", tmp_path)
    assert got == paths[1]
    assert newest in str(rec[0].message) and paths[1] in str(rec[0].message)
    assert safe_load(got)["step"] == 1


def test_last_with_corrupt_pointer_or_no_pointer(tmp_path):
    paths = _save_series(tmp_path, 2)
    (tmp_path / "last.json").write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable"):
        assert resolve_checkpoint("last", tmp_path) == paths[-1]
    os.remove(tmp_path / "last.json")
    with pytest.warns(UserWarning, match="no last.json"):
        assert resolve_checkpoint("last", tmp_path) == paths[-1]


def test_last_with_nothing_valid_raises(tmp_path):
    paths = _save_series(tmp_path, 2)
    for p in paths:
        Path(p).write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no other valid checkpoint"):
        resolve_checkpoint("last", tmp_path)


def test_stale_temp_files_of_live_or_foreign_writers_are_kept(tmp_path):
    mine_alive = tmp_path / f".a.ckpt.{_host()}.{os.getpid()}.x1.tmp"
    foreign = tmp_path / ".a.ckpt.some-other-host.1.x2.tmp"
    for p in (mine_alive, foreign):
        p.write_bytes(b"x")
    dead = tmp_path / f".a.ckpt.{_host()}.999999999.x3.tmp"
    dead.write_bytes(b"x")
    assert clean_stale_temp_files(tmp_path) == [dead.name]
    assert mine_alive.exists() and foreign.exists()


def _host():
    from distengine.checkpoint.io import _host_tag
    return _host_tag()


class TrustedConfig:
    """A harmless class a user may decide to trust: weights_only refuses it all the same."""

    def __init__(self, depth: int = 3) -> None:
        self.depth = depth


def test_unsafe_file_is_reported_as_refused_not_corrupt_and_says_how_to_load_it(tmp_path):
    target = tmp_path / "pwned"
    evil = tmp_path / "epoch=1-step=8.ckpt"
    torch.save({"state_dict": {}, "hook": _CreatesFile(str(target))}, evil)
    with pytest.raises(CheckpointError) as info:
        safe_load(evil)
    message = str(info.value)
    assert "\n" not in message and str(evil) in message
    assert "refused as unsafe" in message and "corrupt" not in message
    assert re.search(r"holds (io|builtins)\.open,", message), message  # names what was refused
    assert "add_safe_globals" in message and "weights_only=False" in message
    # resume through "last": the pointer names the refused file and nothing else is valid
    write_last_pointer(tmp_path, evil)
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint("last", tmp_path)
    message = str(info.value)
    assert "\n" not in message and "refused as unsafe" in message and "corrupt" not in message, message
    assert "add_safe_globals" in message
    # with an older valid checkpoint next to it, the fallback warning says the same
    older = tmp_path / "epoch=0-step=4.ckpt"
    atomic_save({"state_dict": {}}, older)
    os.utime(older, ns=(10**18, 10**18))
    with pytest.warns(UserWarning, match="refused as unsafe") as rec:
        assert resolve_checkpoint("last", tmp_path) == str(older)
    assert "corrupt" not in str(rec[0].message)
    assert not target.exists()


def test_following_the_advice_loads_a_trusted_file(tmp_path):
    path = tmp_path / "trusted.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "config": TrustedConfig(5)}, path)
    with pytest.raises(CheckpointError, match=r"refused as unsafe.*TrustedConfig"):
        safe_load(path)
    assert not is_valid_checkpoint(path)
    with torch.serialization.safe_globals([TrustedConfig]):  # add_safe_globals, scoped to the test
        assert safe_load(path)["config"].depth == 5
        assert is_valid_checkpoint(path)


def _outside_checkpoint(tmp_path):
    """A valid checkpoint outside the folder: exactly what a hostile pointer would load."""
    outside = tmp_path / "elsewhere" / "stolen.ckpt"
    atomic_save({"state_dict": {"w": torch.full((2,), 666.0)}}, outside)
    return outside


@pytest.mark.parametrize("how", ["dotdot", "passwd", "absolute", "symlink"])
def test_last_pointer_outside_its_folder_is_never_followed(tmp_path, how):
    folder = tmp_path / "runs" / "checkpoints"
    folder.mkdir(parents=True)
    outside = _outside_checkpoint(tmp_path)
    stored = {"dotdot": "../../elsewhere/stolen.ckpt", "passwd": "../../../../../../../../etc/passwd",
              "absolute": str(outside), "symlink": "link.ckpt"}[how]
    if how == "symlink":
        os.symlink(outside, folder / "link.ckpt")
    (folder / "last.json").write_text(json.dumps({"version": 1, "path": stored}))
    with pytest.raises(CheckpointError, match="points outside its folder") as info:
        read_last_pointer(folder)
    assert "\n" not in str(info.value)
    # nothing else in the folder (a link leading out is no candidate either): an error, no load
    with pytest.raises(CheckpointError, match="points outside its folder.*no other valid checkpoint"):
        resolve_checkpoint("last", folder)
    # with a real checkpoint in the folder, "last" falls back to it, with a warning
    own = folder / "epoch=0-step=2.ckpt"
    atomic_save({"state_dict": {"w": torch.zeros(2)}}, own)
    with pytest.warns(UserWarning, match="points outside its folder"):
        assert resolve_checkpoint("last", folder) == str(own)


def test_last_pointer_to_a_subfolder_is_followed_and_writing_outside_is_refused(tmp_path):
    folder = tmp_path / "ckpts"
    atomic_save({"a": 1}, folder / "sub" / "x.ckpt")
    write_last_pointer(folder, folder / "sub" / "x.ckpt")
    assert read_last_pointer(folder) == str(folder / "sub" / "x.ckpt")
    with pytest.raises(ValueError, match="can only point at a checkpoint inside that folder"):
        write_last_pointer(folder, _outside_checkpoint(tmp_path))
    assert read_last_pointer(folder) == str(folder / "sub" / "x.ckpt")


def test_last_link_to_a_sharded_directory_is_relative_and_replaces_links_files_and_copies(tmp_path):
    """``last.ckpt`` for a sharded checkpoint (a directory): a relative symbolic link, moved with
    its folder; it replaces an older link, an older file, and a real directory that a copy made
    by following the link (``cp -rL``) left under that name."""
    from distengine.checkpoint.io import link_atomic

    folder = tmp_path / "ckpts"
    for name in ("epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"):
        (folder / name).mkdir(parents=True)
        (folder / name / "meta.pt").write_text(name)
    last = folder / "last.ckpt"
    last.write_text("an older single-file checkpoint")
    link_atomic(folder / "epoch=0-step=2.ckpt", last)
    assert os.path.islink(last) and os.readlink(last) == "epoch=0-step=2.ckpt"
    link_atomic(folder / "epoch=0-step=4.ckpt", last)
    assert os.readlink(last) == "epoch=0-step=4.ckpt"
    os.unlink(last)
    shutil.copytree(folder / "epoch=0-step=2.ckpt", last)  # a real directory under the name
    link_atomic(folder / "epoch=0-step=4.ckpt", last)
    assert os.readlink(last) == "epoch=0-step=4.ckpt"
    assert sorted(os.listdir(folder)) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "last.ckpt"]
    moved = tmp_path / "moved"
    os.rename(folder, moved)
    assert (moved / "last.ckpt" / "meta.pt").read_text() == "epoch=0-step=4.ckpt"
