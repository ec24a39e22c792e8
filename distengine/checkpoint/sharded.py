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
import json
import os
import re
import shutil
import signal
import threading
import uuid
import warnings
import zlib
from concurrent.futures import Future
from typing import Any, Callable, Iterator

import torch.distributed as dist

from distengine import torch_private
from distengine.checkpoint.io import (
    CheckpointError,
    _atomic_write,
    _fsync_dir,
    _write_text,
    atomic_save,
    is_temp_file,
    safe_load,
)
from distengine.dist.setup import new_gloo_group

__all__ = ["MANIFEST", "META_FILE", "ShardedCheckpointer", "check_model_keys", "consolidate", "is_sharded_checkpoint",
           "load_consolidated", "load_sharded", "read_meta", "recover_interrupted_saves", "sharded_keys",
           "sharded_problem", "write_manifest"]

META_FILE = "meta.pt"
#: meta.pt entry: each optimizer's parameter groups without tensors (checked before a load)
OPTIMIZER_GROUPS = "sharded_optimizer_param_groups"
_TMP_MARK = ".tmp-"
_DCP_METADATA = ".metadata"


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """True for a complete sharded checkpoint directory (DCP index and ``meta.pt`` both present)."""
    path = os.fspath(path)
    return (os.path.isdir(path) and os.path.isfile(os.path.join(path, _DCP_METADATA))
            and os.path.isfile(os.path.join(path, META_FILE)))


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
            dcp.save(tensors, checkpoint_id=tmp)
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
                self._error = exc
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


def remove_stale_temp_dirs(folder: str) -> list[str]:
    """Tidy ``folder`` after sharded saves that never finished (a crash or a SIGKILL mid-save),
    with :func:`recover_interrupted_saves`; returns what it removed. Called by rank 0 before
    each save, when none of its own is in flight; the ranks of one job are the only writers
    into its checkpoint folder."""
    return [path for action, path in recover_interrupted_saves(folder) if action == "removed"]


#: leftovers of a save: ``.<name>.tmp-<id>`` (being written), ``.<name>.old-<id>`` (the previous
#: checkpoint of that name, moved aside by a publish), ``.<name>.tmp-old-<id>`` (link_atomic's)
_LEFTOVER = re.compile(r"^\.(?P<base>.+?)\.(?P<kind>tmp|old|tmp-old)-[0-9a-f]+$")


def _complete(path: str) -> bool:
    """A complete checkpoint under any layout: a sharded directory that passes its size checks,
    or a file checkpoint that loads."""
    if os.path.isdir(path):  # last.ckpt: a link to one
        return is_sharded_checkpoint(path) and sharded_problem(path) is None
    from distengine.checkpoint.io import is_valid_checkpoint

    return os.path.isfile(path) and is_valid_checkpoint(path)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def recover_interrupted_saves(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """Put back what an interrupted save left in ``folder``; returns ``(action, path)`` pairs.

    A publish that reuses a name moves the previous checkpoint aside (``.<name>.old-<id>``),
    renames the finished ``.<name>.tmp-<id>`` into place, then deletes the old one; a crash can
    stop it between any two steps. For each name: the newest complete ``.tmp-`` directory (all
    shards and DCP's ``.metadata`` written) is published under it; otherwise, when the name is
    absent, the newest complete ``.old-`` one is renamed back. Incomplete temporaries, and old
    copies once a complete checkpoint holds the name, are removed. No complete checkpoint is
    removed before a newer complete one holds its name. Rank 0 only, with no save in flight.
    """
    folder = os.fspath(folder)
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    groups: dict[str, dict[str, list[str]]] = {}
    for name in names:
        found = _LEFTOVER.match(name)
        if found:
            kind = "tmp" if found["kind"] == "tmp" else "old"
            groups.setdefault(found["base"], {"tmp": [], "old": []})[kind].append(os.path.join(folder, name))
    actions: list[tuple[str, str]] = []

    def newest_first(paths: list[str]) -> list[str]:
        def mtime(p: str) -> int:
            try:
                return os.lstat(p).st_mtime_ns
            except OSError:
                return -1
        return sorted(paths, key=mtime, reverse=True)

    for base, found in sorted(groups.items()):
        final = os.path.join(folder, base)
        tmps = newest_first(found["tmp"])
        olds = newest_first(found["old"])
        good_tmp = next((t for t in tmps if os.path.isdir(t) and _complete(t)), None)
        if good_tmp is not None:  # written to the end: the newest checkpoint of this name
            _publish(good_tmp, final)
            actions.append(("published", final))
        elif not os.path.lexists(final):
            good_old = next((o for o in olds if _complete(o)), None)
            if good_old is not None:  # the crash came between the two renames: the old one goes back
                os.rename(good_old, final)
                _fsync_dir(folder)
                olds.remove(good_old)
                actions.append(("restored", final))
        held = os.path.lexists(final) and _complete(final)
        for path in tmps:
            if path != good_tmp and os.path.lexists(path):
                _remove(path)
                actions.append(("removed", path))
        if held:  # a complete checkpoint holds the name: the copies moved aside are superseded
            for path in olds:
                if os.path.lexists(path):
                    _remove(path)
                    actions.append(("removed", path))
    return actions


#: environment variable of the crash tests: ``<point>:<n>`` SIGKILLs this process at crash point
#: ``<point>`` of the publish sequence the n-th time it is reached (see :func:`_publish`)
_CRASH_ENV = "DISTENGINE_TEST_CRASH"
_crash_counts: dict[str, int] = {}


def _crash_point(name: str) -> None:
    spec = os.environ.get(_CRASH_ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point == name:
        _crash_counts[name] = _crash_counts.get(name, 0) + 1
        if _crash_counts[name] >= int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def _publish(tmp: str, final: str) -> None:
    """Rank 0: rename the finished DCP directory (``meta.pt`` already in it) into place.

    First the checksums of every file go into the directory (:data:`MANIFEST`). A previous
    checkpoint of the same name (a directory, or a file from a full-layout save) is moved
    aside to ``.<name>.old-<id>``, the new one renamed into place, then the old one deleted; a
    crash between any two steps is put right by :func:`recover_interrupted_saves`."""
    if not os.path.isfile(os.path.join(tmp, _DCP_METADATA)):
        raise CheckpointError(f"the sharded save into {tmp!r} finished without DCP's .metadata file")
    if not os.path.isfile(os.path.join(tmp, MANIFEST)):  # a recovered directory has one already
        write_manifest(tmp)
    _crash_point("before-move-old")
    old = None
    if os.path.lexists(final):  # a directory cannot be renamed over a non-empty one: move it aside
        old = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
        _crash_point("after-move-old")
    _crash_point("before-rename")
    os.rename(tmp, final)
    _fsync_dir(os.path.dirname(final))
    _crash_point("after-rename")
    if old is not None:
        _crash_point("before-delete")
        _remove(old)
        _crash_point("after-delete")


# ---------------------------------------------------------------------------- checksums
#: per-file sizes and CRC-32s of a sharded checkpoint, written by rank 0 before the publish rename
MANIFEST = "checksums.json"
_MANIFEST_VERSION = 1
_CHUNK = 1 << 22


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_manifest(directory: str) -> None:
    """Record the size and CRC-32 of every file of sharded checkpoint ``directory`` (every
    rank's shards, ``.metadata``, ``meta.pt``) in ``directory/checksums.json``."""
    files = {}
    for name in sorted(os.listdir(directory)):
        full = os.path.join(directory, name)
        if name != MANIFEST and os.path.isfile(full) and not is_temp_file(name):
            files[name] = {"size": os.path.getsize(full), "crc32": _crc32(full)}
    text = json.dumps({"version": _MANIFEST_VERSION, "files": files}, sort_keys=True) + "\n"
    _atomic_write(os.path.join(directory, MANIFEST), lambda tmp: _write_text(tmp, text))


def _read_manifest(path: str) -> dict[str, Any] | str | None:
    """The manifest's files, None for a checkpoint written before manifests, or why it is unreadable."""
    try:
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return f"its {MANIFEST} is unreadable ({type(exc).__name__})"
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return f"its {MANIFEST} lists no files"
    return files


_verified: dict[tuple[str, tuple[tuple[int, int, int], ...]], bool] = {}


def sharded_problem(path: str | os.PathLike, deep: bool = False) -> str | None:
    """Why sharded checkpoint ``path`` cannot be loaded, naming the file, or None.

    Checks that ``.metadata`` and ``meta.pt`` exist and, when the checkpoint has a
    :data:`MANIFEST`, that every file it lists exists with its recorded size; ``deep`` also
    compares every file's CRC-32 (reads the whole checkpoint once; remembered per process).
    A checkpoint written before manifests is checked for its files' presence only."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return "does not exist or is not a directory"
    for name in (_DCP_METADATA, META_FILE):
        if not os.path.isfile(os.path.join(path, name)):
            return f"is incomplete: it has no {name} (it was not written to the end)"
    files = _read_manifest(path)
    if files is None:
        return None
    if isinstance(files, str):
        return f"is damaged: {files}"
    for name, want in sorted(files.items()):
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            return f"is damaged: its file {name} is missing"
        size = os.path.getsize(full)
        if size != want.get("size"):
            return f"is damaged: its file {name} has {size} bytes, {want.get('size')} were written"
    if not deep:
        return None
    stats = [os.stat(os.path.join(path, name)) for name in sorted(files) + [MANIFEST]]
    key = (os.path.realpath(path), tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in stats))
    if key in _verified:  # verified before, and no file was written since
        return None
    for name, want in sorted(files.items()):
        if _crc32(os.path.join(path, name)) != want.get("crc32"):
            return f"is damaged: its file {name} does not match the checksum written with it"
    _verified[key] = True
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
    """The non-tensor state of a sharded checkpoint (``meta.pt``, loaded with ``safe_load``)."""
    path = os.fspath(path)
    _require(path)
    return safe_load(os.path.join(path, META_FILE))


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
    from distengine.strategies.fsdp import describe_key_mismatch

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
