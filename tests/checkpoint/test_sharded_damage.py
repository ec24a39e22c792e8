"""Damaged sharded checkpoints: checksums per file written with the checkpoint, verified by
``is_valid_checkpoint(deep=True)`` and at load, ``ckpt_path="last"`` falling back to the newest
intact checkpoint with a one-line warning, and one-line ``CheckpointError``s naming the file
for a direct load or ``consolidate``. Checkpoints written before the manifest still load."""
from __future__ import annotations

import os
import warnings

import pytest
import torch

from distengine.checkpoint.io import CheckpointError, is_valid_checkpoint, resolve_checkpoint, write_last_pointer
from distengine.checkpoint.sharded import MANIFEST, ShardedCheckpointer, consolidate, load_sharded

SHARD = "__0_0.distcp"


def _tensors(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"state_dict": {"w": torch.randn(64, 64, generator=g), "b": torch.randn(64, generator=g)}}


@pytest.fixture
def folder(tmp_path):
    ckpt = ShardedCheckpointer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # DCP: "assuming ... a single process"
        for step in (1, 2):
            ckpt.save(tmp_path / f"step={step}.ckpt", _tensors(step), meta={"global_step": step})
    ckpt.close()
    write_last_pointer(tmp_path, tmp_path / "step=2.ckpt")
    return tmp_path


def _zeros(path, offset=0, n=4096):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * n)


def _truncate(path, size=None):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2 if size is None else size)


DAMAGE = {
    "missing shard": (lambda d: os.remove(d / SHARD), SHARD),
    "truncated shard": (lambda d: _truncate(d / SHARD), SHARD),
    "4 KiB of zeros in a shard": (lambda d: _zeros(d / SHARD), SHARD),
    "empty .metadata": (lambda d: _truncate(d / ".metadata", 0), ".metadata"),
}


def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_sharded_checkpoint_is_detected_reported_and_skipped(folder, kind):
    damage, name = DAMAGE[kind]
    bad = folder / "step=2.ckpt"
    assert (bad / MANIFEST).is_file()
    assert is_valid_checkpoint(bad, deep=True)
    damage(bad)
    assert not is_valid_checkpoint(bad, deep=True)
    with pytest.warns(UserWarning) as record:
        got = resolve_checkpoint("last", folder)
    assert got == str(folder / "step=1.ckpt")  # the newest intact one
    msg = [str(w.message) for w in record if "resuming from" in str(w.message)]
    assert len(msg) == 1 and "\n" not in msg[0] and str(bad) in msg[0] and name in msg[0], msg
    tensors = _tensors(0)
    with pytest.raises(CheckpointError) as exc:
        load_sharded(bad, tensors)
    assert str(bad) in _one_line(exc) and name in _one_line(exc)
    with pytest.raises(CheckpointError) as exc:
        consolidate(bad, folder / "out.ckpt")
    assert str(bad) in _one_line(exc) and name in _one_line(exc)
    assert not (folder / "out.ckpt").exists()
    meta = load_sharded(folder / "step=1.ckpt", tensors)  # the intact one loads as written
    assert meta["global_step"] == 1 and torch.equal(tensors["state_dict"]["w"], _tensors(1)["state_dict"]["w"])


def test_checkpoint_without_manifest_still_loads(folder):
    """Written before checksums existed: presence checks only, and still loads."""
    old = folder / "step=2.ckpt"
    os.remove(old / MANIFEST)
    assert is_valid_checkpoint(old, deep=True)
    assert resolve_checkpoint("last", folder) == str(old)
    tensors = _tensors(0)
    assert load_sharded(old, tensors)["global_step"] == 2
    assert torch.equal(tensors["state_dict"]["b"], _tensors(2)["state_dict"]["b"])
    assert consolidate(old, folder / "out.ckpt")["global_step"] == 2


def test_damage_without_manifest_is_one_line_error(folder):
    """No checksums to compare: torch's errors (a bare EOFError, CheckpointException ranks:...)
    become one line naming the checkpoint."""
    old = folder / "step=2.ckpt"
    os.remove(old / MANIFEST)
    _truncate(old / ".metadata", 0)
    with pytest.raises(CheckpointError) as exc:
        consolidate(old, folder / "out.ckpt")
    assert str(old) in _one_line(exc) and ".metadata" in _one_line(exc)
    _truncate(old / SHARD)
    (old / ".metadata").unlink()
    os.link(folder / "step=1.ckpt" / ".metadata", old / ".metadata")
    with pytest.raises(CheckpointError) as exc:
        load_sharded(old, _tensors(0))
    assert str(old) in _one_line(exc)
