"""Checkpoint files read memory-mapped (``torch.load(mmap=True)``), and what that asks of them.

Every rank of a job that restores a full (non-sharded) checkpoint would otherwise read the
whole file into its own memory. Mapped, tensor bytes come from the page cache when they are
touched (shared by the ranks of a node) and go straight into the parameters. Only the zipfile
format (``torch.save``'s default) can be mapped; a legacy file, or a file system that refuses
the mapping, is read as before.

The catch: a mapped tensor reads the file's pages for as long as it lives, and a file that is
truncated or overwritten IN PLACE under it (``torch.save`` or ``shutil.copy`` onto the same
path) kills the process with SIGBUS when such a page is read. distengine never writes a
checkpoint in place (``atomic_save`` renames a new file over the name; the old one lives on
until it is unmapped), and keeps no mapped tensor: :func:`copy_unmapped` copies out every
tensor but the weights under ``state_dict``, which ``load_state_dict`` copies into the
parameters. So ``safe_load`` maps only when asked (``mmap=True``: the Trainer's restore,
``load_from_checkpoint``); by default it reads the file, for code that edits a checkpoint and
saves it back to the same path.
"""
from __future__ import annotations

import pickle
import zipfile
from typing import Any

import torch


def load_file(path: str, map_location: Any, mmap: bool = True) -> Any:
    """``torch.load(weights_only=True)``, memory-mapped when ``mmap`` and the format allow it."""
    if mmap and zipfile.is_zipfile(path):
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        except pickle.UnpicklingError:
            raise  # refused or a broken pickle: loading without mmap would say the same
        except Exception:  # noqa: BLE001 - the plain load below says what is wrong, if anything
            pass
    return torch.load(path, map_location=map_location, weights_only=True)


def copy_unmapped(ckpt: dict) -> dict:
    """``ckpt`` with every CPU tensor outside ``ckpt["state_dict"]`` copied off the mapping
    (optimizer and callback states may be kept for long; the weights are copied when loaded)."""
    def copy(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj.clone() if obj.device.type == "cpu" else obj
        if isinstance(obj, dict):
            return type(obj)((k, copy(v)) for k, v in obj.items())
        if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
            return type(obj)(copy(v) for v in obj)
        return obj
    return {k: (v if k == "state_dict" else copy(v)) for k, v in ckpt.items()}
