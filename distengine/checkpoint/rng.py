"""Capture and restore every random number generator a training process uses.

The captured state holds only types that ``torch.load(weights_only=True)`` accepts (tensors,
lists, tuples, dicts, ints, floats, strings, None): NumPy's state array and Python's Mersenne
Twister words become int64 tensors (a tuple of 625 ints cost about 1 ms of pickling per
checkpoint; checkpoints that stored that tuple still load). Each rank captures its own state; the
Trainer stores one entry per rank.

Example::

    state = capture_rng_state()
    a = torch.rand(3)
    restore_rng_state(state)
    assert torch.equal(a, torch.rand(3))
"""
from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state"]


def capture_rng_state() -> dict[str, Any]:
    """The state of torch (CPU and, when available, every CUDA device), ``random`` and NumPy."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _python_state_to_plain(random.getstate()),
        "numpy": _numpy_state_to_plain(np.random.get_state(legacy=True)),
    }
    # Only touch CUDA when it is in use: querying it would initialise a context on every device
    # (slow, and harmful in a parent process that later forks workers).
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set every generator from a dict made by :func:`capture_rng_state` (possibly reloaded)."""
    if not isinstance(state, dict):
        raise TypeError(f"restore_rng_state expects the dict capture_rng_state returned, got "
                        f"{type(state).__name__}")
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "python" in state:
        random.setstate(_python_state_from_plain(state["python"]))
    if "numpy" in state:
        np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        saved = [torch.as_tensor(s, dtype=torch.uint8).cpu() for s in state["cuda"]]
        count = torch.cuda.device_count()
        if len(saved) != count:
            # a resume on a machine with a different number of visible devices: restore those
            # both have, in order, and say that the rest start from a fresh seed
            warnings.warn(f"the checkpoint holds CUDA RNG states for {len(saved)} devices but "
                          f"{count} are visible; restoring the first {min(len(saved), count)}",
                          UserWarning, stacklevel=2)
        for idx, s in enumerate(saved[:count]):
            torch.cuda.set_rng_state(s, device=idx)


def _python_state_to_plain(st: tuple) -> tuple:
    version, internal, gauss_next = st
    # the 625 words are uint32 (the last is the position): exact in int64
    return (int(version), torch.tensor(internal, dtype=torch.int64), gauss_next)


def _python_state_from_plain(st: Any) -> tuple:
    version, internal, gauss_next = st
    words = internal.tolist() if isinstance(internal, torch.Tensor) else internal  # older: a tuple of ints
    return (int(version), tuple(int(x) for x in words),
            None if gauss_next is None else float(gauss_next))


def _numpy_state_to_plain(st: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = st
    # uint32 words fit in int64 exactly; a plain tensor is what weights_only loading accepts
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _numpy_state_from_plain(st: dict[str, Any]) -> tuple:
    keys = st["keys"]
    keys = keys.cpu().numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    return (st["name"], keys.astype(np.uint32), int(st["pos"]), int(st["has_gauss"]),
            float(st["cached_gaussian"]))
