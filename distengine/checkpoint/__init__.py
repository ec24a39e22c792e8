"""Checkpoint storage: atomic writes, safe loads, the ``last.json`` pointer, RNG state, async writes.

The Trainer gathers the state; this package only stores and retrieves it.
"""
from distengine.checkpoint.async_writer import AsyncCheckpointWriter
from distengine.checkpoint.io import (
    CheckpointError,
    atomic_save,
    is_valid_checkpoint,
    read_last_pointer,
    resolve_checkpoint,
    safe_load,
    write_last_pointer,
)
from distengine.checkpoint.rng import capture_rng_state, restore_rng_state

__all__ = [
    "AsyncCheckpointWriter", "CheckpointError", "atomic_save", "capture_rng_state",
    "is_valid_checkpoint", "read_last_pointer", "resolve_checkpoint", "restore_rng_state",
    "safe_load", "write_last_pointer",
]
