"""Write checkpoints in a background thread while training goes on.

:meth:`AsyncCheckpointWriter.submit` copies every tensor in the state to CPU memory *before*
it returns, so the optimizer may update the weights right away without the change leaking into
the file being written. The write itself (:func:`atomic_save`) runs in a thread. At most one
write is in flight: a second ``submit`` first waits for the previous one, which bounds the extra
memory to one copy of the state. A failed write is re-raised by the next ``submit`` or ``wait``.

The copy is the only part that blocks training, so it is made cheap: the host buffers of one
snapshot are kept and refilled by the next (no allocation and no page faults after the first
save; ``release()`` frees them), and GPU tensors are copied into pinned buffers asynchronously
on the current stream: kernels queued later (the next optimizer step) run after the copy, and
the writer thread waits for the copy to finish before it reads the buffers.

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

from distengine import torch_private
from distengine.checkpoint.io import CheckpointError, atomic_save

__all__ = ["AsyncCheckpointWriter", "copy_state_to_cpu"]


class _Stager:
    """Copies tensors into host storages, optionally refilling the storages of a past snapshot.

    Tensors sharing a storage (tied weights, views) share it in the copy too, so the file is
    what ``torch.save`` would have written from the live tensors.
    """

    def __init__(self, pool: list[torch.UntypedStorage] | None = None) -> None:
        self.pool = pool or []
        self.used: list[torch.UntypedStorage] = []
        self.by_source: dict[tuple[str, int, int], torch.UntypedStorage] = {}
        self.memo: dict[int, Any] = {}
        self.cuda_devices: set[int] = set()

    def copy(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            key = id(obj)
            if key not in self.memo:
                self.memo[key] = self._tensor(obj)
            return self.memo[key]
        if isinstance(obj, (str, bytes, int, float, bool, type(None))):
            return obj
        if isinstance(obj, dict):
            try:
                out = type(obj)()  # keeps OrderedDict (state_dicts) and plain dicts as they are
            except TypeError:
                out = {}
            for k, v in obj.items():
                out[k] = self.copy(v)
            torch_private.copy_state_dict_metadata(obj, out)  # a state_dict's version info; torch.save keeps it
            return out
        if isinstance(obj, list):
            return [self.copy(v) for v in obj]
        if isinstance(obj, tuple):
            items = [self.copy(v) for v in obj]
            return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
        return copy.deepcopy(obj)

    def _tensor(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if t.layout != torch.strided or t.is_quantized or t.is_nested:
            return t.to("cpu", copy=True)  # rare layouts: a plain copy, storage sharing not kept
        src = t.untyped_storage()
        skey = (src.device.type, src.device.index or 0, src.data_ptr())
        dst = self.by_source.get(skey)
        if dst is None:
            dst = self._stage(src)
            self.by_source[skey] = dst
        out = torch.empty(0, dtype=t.dtype, device="cpu")
        out.set_(dst, t.storage_offset(), t.size(), t.stride())
        return out

    def _stage(self, src: torch.UntypedStorage) -> torch.UntypedStorage:
        on_gpu = src.device.type == "cuda"
        # storages come in the same order at every save of the same state: reuse slot i
        slot = len(self.used)
        dst = self.pool[slot] if slot < len(self.pool) else None
        if dst is None or dst.nbytes() != src.nbytes() or (on_gpu and not dst.is_pinned()):
            dst = torch.empty(src.nbytes(), dtype=torch.uint8, pin_memory=on_gpu).untyped_storage()
        if on_gpu:
            with torch.cuda.device(src.device):
                dst.copy_(src, non_blocking=True)
            self.cuda_devices.add(src.device.index or 0)
        else:
            dst.copy_(src)
        self.used.append(dst)
        return dst

    def copies_done(self) -> list[tuple[int, Any]]:
        """(device index, CUDA event) per device, recorded after the queued copies (empty on CPU)."""
        events = []
        for index in sorted(self.cuda_devices):
            with torch.cuda.device(index):
                ev = torch.cuda.Event()
                ev.record()
                events.append((index, ev))
        return events


def wait_for_copies(events: list[tuple[int, Any]]) -> None:
    """Block until the copies behind ``events`` (from :meth:`_Stager.copies_done`) landed.

    A new thread starts on CUDA device 0: without selecting the event's device first, the
    first CUDA call of a writer thread on a rank that trains on GPU k would create a context
    (hundreds of MB) on GPU 0.
    """
    for index, ev in events:
        torch.cuda.set_device(index)
        ev.synchronize()


def copy_state_to_cpu(state: Any) -> Any:
    """A deep copy of ``state`` whose tensors live in new CPU memory (complete on return).

    Example: ``snap = copy_state_to_cpu({"model": model.state_dict()})``.
    """
    stager = _Stager()
    out = stager.copy(state)
    for _, ev in stager.copies_done():
        ev.synchronize()
    return out


class AsyncCheckpointWriter:
    """Writes one checkpoint at a time in a background thread; see the module docstring.

    ``reuse_buffers=False`` allocates fresh host memory for every snapshot instead of keeping
    one snapshot's worth between saves.
    """

    def __init__(self, reuse_buffers: bool = True) -> None:
        self.reuse_buffers = reuse_buffers
        self._pool: list[torch.UntypedStorage] = []
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
        # one write in flight at most (and its buffers are free again); re-raises its failure
        self.wait()
        stager = _Stager(self._pool if self.reuse_buffers else None)
        snapshot = stager.copy(state)
        events = stager.copies_done()
        if self.reuse_buffers:
            self._pool = stager.used
        thread = threading.Thread(target=self._run, args=(snapshot, os.fspath(path), events, on_done),
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
            kind = CheckpointError if isinstance(err, CheckpointError) else RuntimeError  # disk full: one line
            raise kind(f"the background checkpoint write failed: {err}") from err

    def release(self) -> None:
        """Wait for the write in flight, then free the kept host buffers."""
        self.wait()
        self._pool = []

    def _run(self, snapshot: dict, path: str, events: list[tuple[int, Any]],
             on_done: Callable[[str], None] | None) -> None:
        try:
            wait_for_copies(events)  # the device-to-host copies must land before we read them
            atomic_save(snapshot, path)
            if on_done is not None:
                on_done(path)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread
            with self._lock:
                self._error = exc
