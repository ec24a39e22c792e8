"""Reading ``torch.distributed.checkpoint`` directories without running code from them.

Stock DCP unpickles the ``.metadata`` index with plain ``pickle.load`` and every non-tensor
entry (an optimizer's ``lr``, ``betas``...) with ``torch.load(weights_only=False)``: a crafted
checkpoint directory could run code when loaded. The engine promises that loading a checkpoint
never does (see ``checkpoint/io.py``), so sharded checkpoints are read through
:class:`SafeReader` (the index unpickled with only DCP's own metadata classes, ``torch.Size``,
dtypes and paths allowed) and :class:`SafeLoadPlanner` / :class:`SafeFullLoadPlanner`
(non-tensor entries loaded with ``weights_only=True``). Tensor data DCP already reads with
``weights_only=True``.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import pathlib
import pickle
from collections.abc import Iterator
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

from distengine import torch_private
from distengine.checkpoint.files import CheckpointError

_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
_PATHS = {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"}


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _DCP_MODULES:
            obj = getattr(importlib.import_module(module), name, None)
            if isinstance(obj, type):  # DCP's metadata dataclasses and enums
                return obj
        elif module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)):
            return getattr(torch, name)
        elif (module, name) in torch_private.CHECKPOINT_INDEX_PRIVATE_GLOBALS:
            return torch_private.CHECKPOINT_INDEX_PRIVATE_GLOBALS[(module, name)]
        elif module == "pathlib" and name in _PATHS:
            return getattr(pathlib, name)
        elif (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


class SafeReader(FileSystemReader):
    """``FileSystemReader`` whose ``.metadata`` index may hold DCP's metadata classes only."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = torch_private.dcp_metadata_path(self, kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            try:
                metadata = _IndexUnpickler(f).load()
            except pickle.UnpicklingError as exc:
                raise CheckpointError(f"the index of sharded checkpoint {str(self.path)!r} was refused as unsafe "
                                      f"({exc}); it was not written by torch.distributed.checkpoint") from None
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"the index of sharded checkpoint {str(self.path)!r} is not DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _load_plain(value: io.BytesIO) -> Any:
    return torch.load(value, weights_only=True)


class SafeLoadPlanner(DefaultLoadPlanner):
    """Fills an existing state dict; non-tensor entries are loaded with ``weights_only=True``."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        if self.flatten_state_dict:
            torch_private.dcp_set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn],
                                          _load_plain(value))
        else:
            self.state_dict[read_item.dest_index.fqn] = _load_plain(value)


class SafeFullLoadPlanner(torch_private.empty_state_dict_load_planner()):  # type: ignore[misc]
    """Rebuilds the whole state dict from the index (one process); non-tensor entries safely."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        SafeLoadPlanner.load_bytes(self, read_item, value)  # type: ignore[arg-type]


@contextlib.contextmanager
def refusals_as_checkpoint_errors(path: Any) -> Iterator[None]:
    """DCP reports a rank's failure as ``CheckpointException`` holding the original error; an
    entry refused by ``weights_only`` becomes the engine's one-line :class:`CheckpointError`."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as exc:
        failures = list(getattr(exc, "failures", {}).values())
        if any(isinstance(f, pickle.UnpicklingError) or "Weights only load failed" in str(f) for f in failures):
            raise CheckpointError(f"sharded checkpoint {str(path)!r} was refused as unsafe: an entry is not plain "
                                  "data, and unpickling it could run code") from None
        raise
