"""Write checkpoints in a background thread while training goes on.

:meth:`AsyncCheckpointWriter.submit` copies every tensor in the state to fresh CPU memory
*before* it returns, so the optimizer may update the weights right away without the change
leaking into the file being written. The write itself (:func:`atomic_save`) runs in a thread.
At most one write is in flight: a second ``submit`` first waits for the previous one, which
bounds the extra memory to one copy of the state. A failed write is re-raised by the next
``submit`` or ``wait``.

Example::

    writer = AsyncCheckpointWriter()
    for step in range(1000):
        train_step()
        if step % 100 == 0:
            writer.submit({"model": model.state_dict(), "step": step}, f"ckpt/{step}.ckpt")
    writer.wait()     # before the process exits
"""
from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable
from typing import Any

import torch

from distengine.checkpoint.io import atomic_save

__all__ = ["AsyncCheckpointWriter", "copy_state_to_cpu"]


def copy_state_to_cpu(state: Any) -> Any:
    """A deep copy of ``state`` whose tensors live in new CPU memory.

    Tensors that share storage in ``state`` (tied weights, views) share it in the copy too, so
    the file is the same as ``torch.save(state)`` would have written from the live tensors.
    """
    storages: dict[tuple[str, int, int], torch.UntypedStorage] = {}
    return _copy(state, storages, {})


def _copy(obj: Any, storages: dict, memo: dict[int, Any]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = id(obj)
        if key not in memo:
            memo[key] = _copy_tensor(obj, storages)
        return memo[key]
    if isinstance(obj, (str, bytes, int, float, bool, type(None))):
        return obj
    if isinstance(obj, dict):
        try:
            out = type(obj)()  # keeps OrderedDict (state_dicts) and plain dicts as they are
        except TypeError:
            out = {}
        for k, v in obj.items():
            out[k] = _copy(v, storages, memo)
        # a state_dict carries its version info in an attribute that torch.save keeps
        if hasattr(obj, "_metadata"):
            try:
                out._metadata = copy.deepcopy(obj._metadata)  # type: ignore[attr-defined]
            except AttributeError:  # a plain dict cannot carry attributes
                pass
        return out
    if isinstance(obj, list):
        return [_copy(v, storages, memo) for v in obj]
    if isinstance(obj, tuple):
        items = [_copy(v, storages, memo) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    return copy.deepcopy(obj)


def _copy_tensor(t: torch.Tensor, storages: dict) -> torch.Tensor:
    t = t.detach()
    if t.layout != torch.strided or t.is_quantized or t.is_nested:
        return t.to("cpu", copy=True)  # rare layouts: a plain copy, storage sharing not kept
    src = t.untyped_storage()
    skey = (src.device.type, src.device.index or 0, src.data_ptr())
    dst = storages.get(skey)
    if dst is None:
        if src.device.type == "cpu":
            dst = src.clone()
        else:
            dst = src.cpu()  # a device-to-host copy; returns new host memory
        storages[skey] = dst
    out = torch.empty(0, dtype=t.dtype, device="cpu")
    out.set_(dst, t.storage_offset(), t.size(), t.stride())
    return out


class AsyncCheckpointWriter:
    """Writes one checkpoint at a time in a background thread; see the module docstring."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> bool:
        """True while a write is running."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, state: dict, path: str | os.PathLike,
               on_done: Callable[[str], None] | None = None) -> None:
        """Copy ``state`` off the training tensors now, write it to ``path`` in the background.

        ``on_done(path)`` runs in the writer thread once the file is durable (for example to
        update ``last.json`` and delete older checkpoints); an error in it is reported like a
        failed write.
        """
        if not isinstance(state, dict):
            raise TypeError(f"submit expects a dict state, got {type(state).__name__}")
        self.wait()  # one write in flight at most; also re-raises the previous failure
        snapshot = copy_state_to_cpu(state)
        target = os.fspath(path)
        thread = threading.Thread(target=self._run, args=(snapshot, target, on_done),
                                  name="distengine-ckpt-writer", daemon=False)
        # non-daemon: if the program ends without wait(), the interpreter still finishes the
        # write before exiting instead of cutting it off
        self._thread = thread
        thread.start()

    def wait(self) -> None:
        """Block until every submitted write is done; re-raise a write error, if any."""
        thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None
        with self._lock:
            err, self._error = self._error, None
        if err is not None:
            raise RuntimeError(f"the background checkpoint write failed: {err}") from err

    def _run(self, snapshot: dict, path: str, on_done: Callable[[str], None] | None) -> None:
        try:
            atomic_save(snapshot, path)
            if on_done is not None:
                on_done(path)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread
            with self._lock:
                self._error = exc
