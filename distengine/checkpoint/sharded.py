"""Sharded checkpoints: one ``torch.distributed.checkpoint`` (DCP) directory, each rank writing its shards.

Layout of ``<name>/`` (a directory, named like a file checkpoint: ``epoch=0-step=4.ckpt``)::

    .metadata          DCP's index of every tensor and which file holds which shard
    __0_0.distcp ...   the shards, one file per rank
    meta.pt            the non-tensor state (progress, callbacks, loggers, every rank's RNG ...),
                       written by rank 0 with ``atomic_save``; loads with ``safe_load``

A checkpoint counts only when it is complete: every rank writes into ``.<name>.tmp-<id>/``
(rank 0 puts ``meta.pt`` there first); once DCP's ``.metadata`` exists (DCP writes it only after
every rank reported its shards written) rank 0 renames the directory into place. A crash at
any point leaves the previous checkpoint intact and no half-written directory under a final
name. Loading reshards: a checkpoint written by N ranks loads on M ranks, into FSDP shards or
into complete tensors (DDP, one process); DCP reads each rank's part of each tensor.

Example::

    ckpt = ShardedCheckpointer()
    state = {"state_dict": model_sd, "optimizer_states": {"0": optim_sd}}   # the Trainer's names
    ckpt.save("ckpts/epoch=0-step=4.ckpt", state, meta={"global_step": 4}, async_save=True)
    ckpt.wait()                        # after an async save (also done by the next save)
    meta = load_sharded("ckpts/epoch=0-step=4.ckpt", state)   # fills ``state`` in place
    ckpt.close()                       # wait, then release the checkpoint process group
"""
from __future__ import annotations

import contextlib
import os
import threading
import uuid
import warnings
from concurrent.futures import Future
from typing import Any, Callable, Iterator

import torch.distributed as dist

from distengine import torch_private
from distengine.checkpoint.files import CheckpointError, atomic_save, load_checkpoint_file
from distengine.checkpoint.key_mismatch import describe_key_mismatch
from distengine.checkpoint.sharded_files import (  # noqa: F401 - re-exported
    _CHUNK,
    _CRASH_ENV,
    _DCP_METADATA,
    _LEFTOVER,
    _MANIFEST_VERSION,
    _TMP_MARK,
    MANIFEST,
    META_FILE,
    _complete,
    _crash_counts,
    _crash_point,
    _crc32,
    _publish,
    _read_manifest,
    _remove,
    _verified,
    is_sharded_checkpoint,
    recover_interrupted_saves,
    remove_stale_temp_dirs,
    sharded_problem,
    write_manifest,
)
from distengine.checkpoint.write_failures import disk_cause, errno_in, free_after_removing, message, payload_bytes
from distengine.distributed.setup import new_gloo_group

__all__ = ["MANIFEST", "META_FILE", "ShardedCheckpointer", "check_model_keys", "consolidate", "is_sharded_checkpoint",
           "load_consolidated", "load_sharded", "read_meta", "recover_interrupted_saves", "sharded_keys",
           "sharded_problem", "write_manifest"]

#: meta.pt entry: each optimizer's parameter groups without tensors (checked before a load)
OPTIMIZER_GROUPS = "sharded_optimizer_param_groups"



def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _distributed() -> bool:
    """A process group is up, even of one rank: a 1-rank NCCL job still needs the gloo side
    group for an async save (DCP's background write cannot run its collectives over NCCL)."""
    return dist.is_available() and dist.is_initialized()


class ShardedCheckpointer:
    """Writes sharded checkpoints; every rank calls :meth:`save` with its own shards.

    ``async_save=True`` copies the shards to host memory (a staging copy kept and refilled by
    each save until :meth:`close`; a fresh one per save on torch 2.11), returns, and writes in a background
    thread over a checkpoint-only gloo process group (collectives of the save must not
    interleave with training's on the default group). At most one save is in flight: the next
    save, :meth:`wait` and :meth:`close` wait for it and raise its error, if any.
    """

    def __init__(self) -> None:
        self._pending: tuple[Future, threading.Event] | None = None
        self._group: Any = None
        self._error: BaseException | None = None
        self._stager: Any = None

    # ------------------------------------------------------------------ save
    def save(self, path: str | os.PathLike, tensors: dict[str, Any], meta: dict[str, Any] | None = None,
             async_save: bool = False, on_done: Callable[[str], Any] | None = None) -> None:
        """Write ``tensors`` (state dicts of DTensor shards or plain tensors) to directory ``path``;
        ``meta`` (plain data, rank 0's is written) goes into ``meta.pt``. A collective.

        ``on_done(path)`` runs on rank 0 once the checkpoint is in place (in the background
        thread after an async save)."""
        import torch.distributed.checkpoint as dcp

        self.wait()
        final = os.path.abspath(os.fspath(path))
        parent = os.path.dirname(final)
        os.makedirs(parent, exist_ok=True)
        if _rank() == 0:  # before the broadcast below: no rank knows the new name yet
            remove_stale_temp_dirs(parent)  # nothing of ours is in flight: we waited above
        tag = uuid.uuid4().hex[:12]
        if _distributed():  # one temporary name for all ranks, chosen by rank 0
            box = [tag]
            dist.broadcast_object_list(box, src=0)
            tag = box[0]
        tmp = os.path.join(parent, f".{os.path.basename(final)}{_TMP_MARK}{tag}")
        if _rank() == 0:  # now, not after an async write: ``meta`` may hold objects that change later
            os.makedirs(tmp, exist_ok=True)
            atomic_save(meta or {}, os.path.join(tmp, META_FILE))
        if not async_save:
            try:
                dcp.save(tensors, checkpoint_id=tmp)
            except BaseException as exc:
                full = _disk_failure(exc, tmp, final, tensors)
                if full is None:
                    raise
                raise full from exc
            if _rank() == 0:
                _publish(tmp, final)
                if on_done is not None:
                    on_done(final)
            if _distributed():
                dist.barrier()  # nobody reads or replaces it before it is in place
            return
        stager = self._reused_stager()
        try:
            future = dcp.async_save(tensors, checkpoint_id=tmp, process_group=self._checkpoint_group(),
                                    async_stager=stager)
        finally:
            if stager is not self._stager:  # a one-save stager (torch 2.11): staging is done
                stager.close()
        finished = threading.Event()
        rank0 = _rank() == 0

        def finish(f: Future) -> None:
            # DCP's future completes after .metadata is written, which needs every rank's result
            try:
                f.result()
                if rank0:
                    _publish(tmp, final)
                    if on_done is not None:
                        on_done(final)
            except BaseException as exc:  # noqa: BLE001 - raised by the next save/wait/close
                self._error = _disk_failure(exc, tmp, final, tensors) or exc
            finally:
                finished.set()

        self._pending = (future, finished)
        future.add_done_callback(finish)

    def _reused_stager(self) -> Any:
        """One staging area for every async save of this checkpointer. DCP's default stager
        allocates a fresh host copy of the shards at each save (page faults on every byte,
        the larger part of the time a save blocks training); this one keeps the copy of the
        previous save and refills it (pinned on a GPU). Reuse is safe: the next save starts
        only after the previous one was written (see :meth:`wait`).

        Where a stager cannot stage twice (torch 2.11 empties its copy table after every
        stage: the second save would raise ``KeyError: <class 'type'>``; see
        :func:`distengine.torch_private.stager_survives_stage`), every save gets a fresh one,
        which :meth:`save` closes once it has staged; there is no copy to keep there anyway."""
        if self._stager is not None:
            return self._stager
        import torch
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

        # staged on the calling thread, with blocking copies: nothing is read after we return
        stager = DefaultStager(StagingOptions(use_pinned_memory=torch.cuda.is_available(),
                                              use_shared_memory=False, use_async_staging=False,
                                              use_non_blocking_copy=False))
        if torch_private.stager_survives_stage():
            self._stager = stager
        return stager

    def _checkpoint_group(self) -> Any:
        # also with one rank: DCP's async save needs a CPU-capable group, and a 1-rank FSDP
        # run on a GPU may have an NCCL default group
        if self._group is None and _distributed():
            self._group = new_gloo_group()  # with the Trainer's dist_timeout
        return self._group

    def wait(self) -> None:
        """Wait until the save in flight is in place; raise its error, if any."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending[1].wait()
        if self._error is not None:
            exc, self._error = self._error, None
            raise CheckpointError(f"the asynchronous sharded checkpoint save failed: {exc}") from exc

    @property
    def in_flight(self) -> bool:
        return self._pending is not None and not self._pending[1].is_set()

    def close(self) -> None:
        """Wait for the save in flight, then destroy the checkpoint process group (a collective
        when one was created: every rank calls ``close``)."""
        try:
            self.wait()
        finally:
            stager, self._stager = self._stager, None
            if stager is not None:
                stager.close()  # frees the staged host copy
            group, self._group = self._group, None
            if group is not None and dist.is_initialized():
                dist.destroy_process_group(group)


def _disk_failure(exc: BaseException, tmp: str, final: str, tensors: dict[str, Any]) -> CheckpointError | None:
    """A one-line error when the save into ``tmp`` failed for want of disk space, quota or file
    size limit (DCP says only ``CheckpointException ranks:dict_keys([0, 1])``; see
    ``write_failures.py``), None otherwise. Every rank that fails says so; the partial directory
    is deleted by the next save (``remove_stale_temp_dirs``), so the free space counts it."""
    try:
        cause = disk_cause(exc, tmp) if os.path.isdir(tmp) else errno_in(exc)
        if cause is None:
            return None
        world = dist.get_world_size() if _distributed() else 1
        folder = tmp if os.path.isdir(tmp) else os.path.dirname(tmp)
        return CheckpointError(message(cause, final, payload_bytes(tensors) * world, free_after_removing(folder)))
    except Exception:  # noqa: BLE001 - the original error is raised instead
        return None


# ---------------------------------------------------------------------------- load
def _require(path: str) -> None:
    """Raise a one-line :class:`CheckpointError` naming the damaged file unless ``path`` is a
    complete sharded checkpoint whose files match their checksums (verified once per process)."""
    if not os.path.isdir(path):
        raise CheckpointError(f"sharded checkpoint {path!r} does not exist or is not a directory")
    why = sharded_problem(path, deep=True)
    if why is not None:
        raise CheckpointError(f"sharded checkpoint {path!r} {why}")
    if not os.path.isfile(os.path.join(path, MANIFEST)):  # written before checksums: is the index readable?
        from distengine.checkpoint.dcp_safe import SafeReader

        try:
            SafeReader(path).read_metadata()
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - empty, truncated, not a pickle ...
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise CheckpointError(f"sharded checkpoint {path!r} is damaged: its file {_DCP_METADATA} cannot be "
                                  f"read ({type(exc).__name__}: {first})") from exc


@contextlib.contextmanager
def _damage_as_checkpoint_error(path: str) -> Iterator[None]:
    """torch's errors for a damaged directory (``CheckpointException ranks:...``, a bare
    ``EOFError`` for an empty ``.metadata`` ...) as one line that names the checkpoint; a
    checkpoint with a manifest was verified before, one without gets this."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    try:
        yield
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as exc:  # noqa: BLE001 - anything DCP raises reading the files
        inner = exc
        failures = getattr(exc, "failures", None)  # CheckpointException: {rank: exception}
        if isinstance(failures, dict) and failures:
            inner = next(iter(failures.values()))
            if isinstance(inner, tuple) and inner and isinstance(inner[0], BaseException):
                inner = inner[0]  # an (exception, traceback) pair
        first = (str(inner).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"sharded checkpoint {path!r} cannot be loaded, its files are damaged or do not "
                              f"fit ({type(inner).__name__}: {first})") from exc


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The non-tensor state of a sharded checkpoint (``meta.pt``, a checkpoint file: files.py)."""
    path = os.fspath(path)
    _require(path)
    return load_checkpoint_file(os.path.join(path, META_FILE))


def sharded_keys(path: str | os.PathLike) -> set[str]:
    """The flattened keys (``model.blocks.0.fc1.weight``) stored in a sharded checkpoint."""
    from distengine.checkpoint.dcp_safe import SafeReader

    path = os.fspath(path)
    _require(path)
    with _damage_as_checkpoint_error(path):
        return set(SafeReader(path).read_metadata().state_dict_metadata)


def check_model_keys(path: str | os.PathLike, tensors: dict[str, Any]) -> None:
    """Raise a :class:`CheckpointError` naming the missing and unexpected weight names when the
    module's keys (``tensors["state_dict"]`` or ``tensors["model"]``) differ from the checkpoint's."""
    stored = sharded_keys(path)
    for entry in ("model", "state_dict"):  # the module's weights, under either name
        if entry in tensors:
            have = {k[len(entry) + 1:] for k in stored if k.startswith(entry + ".")}
            want = set(tensors[entry])
            if have != want:
                raise CheckpointError(f"{os.fspath(path)}: " + describe_key_mismatch(want - have, have - want))


def load_sharded(path: str | os.PathLike, tensors: dict[str, Any]) -> dict[str, Any]:
    """Fill ``tensors`` in place from the checkpoint (each rank reads its shards, or complete
    tensors where it holds plain tensors) and return ``meta.pt``'s contents. A collective when
    a process group is running; works in a plain process too.

    The keys of ``tensors["model"]`` (or ``tensors["state_dict"]``) must match the checkpoint's; otherwise a
    :class:`CheckpointError` names the missing and unexpected ones.
    """
    import torch.distributed.checkpoint as dcp

    from distengine.checkpoint.dcp_safe import SafeLoadPlanner, SafeReader, refusals_as_checkpoint_errors

    path = os.fspath(path)
    meta = read_meta(path)
    check_model_keys(path, tensors)
    no_dist = not (dist.is_available() and dist.is_initialized())
    with warnings.catch_warnings():
        if no_dist:  # DCP warns that it "assumes" one process: here that is the intent
            warnings.simplefilter("ignore", UserWarning)
        with _damage_as_checkpoint_error(path), refusals_as_checkpoint_errors(path):
            dcp.load(tensors, storage_reader=SafeReader(path), planner=SafeLoadPlanner(), no_dist=no_dist)
    return meta


def consolidate(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Turn sharded checkpoint ``src`` into one ordinary checkpoint file ``dst`` (see
    :func:`load_consolidated`); returns what it wrote."""
    out = load_consolidated(src)
    atomic_save(out, os.fspath(dst))
    return out


def load_consolidated(src: str | os.PathLike) -> dict[str, Any]:
    """Sharded checkpoint ``src`` as the dictionary of an ordinary checkpoint file (in this
    process, without a process group): the model's complete weights under ``state_dict``, the
    optimizers' states in ``optimizer.state_dict()`` form, and ``meta.pt``'s entries.
    ``safe_load`` of a directory returns this."""
    # the private loader, as DCP's own dcp_to_torch_save uses it: the public dcp.load copies back
    # only the keys the caller's dict already has, and here it starts empty
    from distengine.checkpoint.dcp_safe import SafeFullLoadPlanner, SafeReader, refusals_as_checkpoint_errors

    src = os.fspath(src)
    meta = read_meta(src)
    full: dict[str, Any] = {}
    with warnings.catch_warnings():  # "no process group: loading in a single process" is the intent
        warnings.simplefilter("ignore", UserWarning)
        with _damage_as_checkpoint_error(src), refusals_as_checkpoint_errors(src):
            torch_private.load_state_dict_into(full, SafeReader(src), SafeFullLoadPlanner(), no_dist=True)
    out = {k: v for k, v in meta.items() if k != OPTIMIZER_GROUPS}
    out["state_dict"] = full.pop("state_dict", {})
    optims = full.pop("optimizer_states", None)
    if optims is not None:
        out["optimizer_states"] = [name_keyed_to_indexed(o) for o in _as_list(optims)]
    out.update({k: v for k, v in full.items() if k not in out})
    return out


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, dict) and all(str(k).isdigit() for k in value):
        return [value[k] for k in sorted(value, key=int)]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def name_keyed_to_indexed(osd: dict[str, Any]) -> dict[str, Any]:
    """``get_optimizer_state_dict``'s form (parameters named by FQN) -> ``optimizer.state_dict()``'s
    (parameters numbered in the order of the parameter groups), so ``optimizer.load_state_dict``
    takes it. Parameters without state (no step yet) keep their number."""
    groups, state, index = [], {}, {}
    for group in osd.get("param_groups", []):
        names = group["params"]
        for name in names:
            index.setdefault(name, len(index))
        groups.append({**group, "params": [index[n] for n in names]})
    for name, value in osd.get("state", {}).items():
        if name in index:
            state[index[name]] = value
    return {"state": state, "param_groups": groups}


def indexed_to_name_keyed(osd: dict[str, Any], module: Any, optimizer: Any) -> dict[str, Any]:
    """The inverse for loading: ``optimizer.state_dict()``'s form (a checkpoint of a plain or DDP
    run) -> parameters named by FQN, as ``set_optimizer_state_dict`` takes it. The numbers are
    matched to ``optimizer``'s parameters group by group (the groups were checked to agree)."""
    groups = osd.get("param_groups", [])
    if not any(isinstance(p, int) for g in groups for p in g.get("params", [])):
        return osd  # already keyed by name
    names = {id(p): n for n, p in module.named_parameters()}
    index: dict[int, str] = {}
    for saved, current in zip(groups, optimizer.param_groups):
        for i, p in zip(saved["params"], current["params"]):
            index[i] = names[id(p)]
    return {"state": {index[int(i)]: v for i, v in osd.get("state", {}).items() if int(i) in index},
            "param_groups": [{**g, "params": [index[i] for i in g["params"]]} for g in groups]}
