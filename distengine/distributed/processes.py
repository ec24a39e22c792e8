"""Start the ranks of a run from this interpreter: ``strategy="ddp_notebook"``/``"ddp_fork"``
(fork) and ``"ddp_spawn"`` (spawn), Lightning's ``_MultiProcessingLauncher``.

For a Trainer that has no script to re-run (a notebook, ``python -c``) or whose user asked for
it. What happens (parent = the process that called ``fit``)::

    parent                                      rank r (fork: a copy of the parent; spawn: a new interpreter)
    fork: CUDA must not be initialised yet
    spawn: pickle the job (refuse classes that
      the ranks cannot import: a notebook's)
    capture RNG + deterministic flags           set RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* (env:// rendezvous)
    free loopback port, start N processes       restore RNG + flags, run job(r): the stage on 2 gloo/NCCL ranks
    wait; a rank fails: stop the others         rank 0 saves what the parent needs (a file, torch.save)
    raise that rank's error, or return          a failure: its exception and traceback go to a file, exit 1
      rank 0's result

Every process this starts has ended when :func:`run` returns or raises: a rank that fails ends
the run (the others get a few seconds to stop by themselves, then SIGKILL), Ctrl-C (a notebook's
"interrupt") is passed on to the ranks (they stop gracefully, as under ``distengine launch``),
and a rank dies with the parent if the parent is killed (parent-death signal).
"""
from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch

from distengine.distributed.env import usable_cpu_count

#: after one rank failed, how long the others get to notice (a lost peer ends their collective)
FAIL_GRACE_S = 3.0
#: after Ctrl-C, how long the ranks get to stop at a step boundary and write their checkpoint
INTERRUPT_GRACE_S = 30.0
_RESULT, _ERROR = "result.pt", "error-rank{}.pkl"


class RemoteTraceback(Exception):
    """The traceback of the rank that failed, attached as the ``__cause__`` of its error."""

    def __str__(self) -> str:
        return self.args[0]


# ---------------------------------------------------------------------------- parent side
def run(job: Callable[[int], Any], nprocs: int, start_method: str, *, what: str,
        cuda_visible_devices: str | None = None) -> Any:
    """Run ``job(rank)`` in ``nprocs`` new processes that form one process group (env://
    rendezvous on a free loopback port) and return what rank 0's call returned. ``what`` names
    the strategy in errors (``"strategy='ddp_spawn'"``)."""
    if start_method not in multiprocessing.get_all_start_methods():
        raise ValueError(f"Trainer({what}) needs the {start_method!r} start method, which this platform lacks "
                         f"(it has {', '.join(multiprocessing.get_all_start_methods())})")
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # a spawned rank is importing the script that started it: its top level ran fit again
        raise RuntimeError(f"Trainer({what}) runs the script's top level again in each new process: guard it "
                           "with `if __name__ == \"__main__\":` (or run the script with `distengine launch`)")
    if start_method == "fork" and torch.cuda.is_initialized():
        raise RuntimeError(f"Trainer({what}) cannot fork its processes: CUDA is already initialised in this "
                           "process (a tensor or model moved to the GPU, or a torch.cuda call, before fit); "
                           "remove those calls (in a notebook: restart the kernel) or use strategy='ddp_spawn' "
                           "from a script")
    start = _StartState.capture()
    payload: Any = (start, job) if start_method == "fork" else _pickle_job((start, job), what)
    folder = tempfile.mkdtemp(prefix="distengine-ranks-")
    ctx = multiprocessing.get_context(start_method)
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, name=f"distengine-rank-{r}", daemon=False,
                         args=(r, nprocs, port, os.getpid(), payload, folder, cuda_visible_devices))
             for r in range(nprocs)]
    try:
        for p in procs:
            p.start()
        failed = _wait(procs)
        if failed is not None:
            _end(procs, FAIL_GRACE_S)
            _raise_failure(procs, failed, folder, what)
        with open(os.path.join(folder, _RESULT), "rb") as f:
            return torch.load(f, weights_only=False, map_location="cpu")  # our own file, rank 0's result
    except KeyboardInterrupt:
        _end(procs, INTERRUPT_GRACE_S, signal.SIGINT)  # a graceful stop, as `distengine launch` does
        raise
    finally:
        _end(procs, 0.0)
        shutil.rmtree(folder, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _MainChecker(pickle.Pickler):
    """Pickles like ``pickle`` and notes the first class or function defined in ``__main__``."""

    def __init__(self, file: Any) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.found: Any = None

    def reducer_override(self, obj: Any) -> Any:
        if self.found is None and isinstance(obj, (type, types.FunctionType)) and \
                getattr(obj, "__module__", None) == "__main__":
            self.found = obj
        return NotImplemented


def _pickle_job(job: Any, what: str) -> bytes:
    """The job as bytes for a spawned rank (tensors by value, so no memory is shared)."""
    buf = io.BytesIO()
    pickler = _MainChecker(buf)
    pickler.dump(job)
    main = sys.modules.get("__main__")
    # a script's __main__ is imported again by each spawned process; a notebook's, `python -c`'s
    # or the prompt's is not, so classes defined there cannot be unpickled in the ranks
    if pickler.found is not None and getattr(main, "__file__", None) is None:
        name = getattr(pickler.found, "__qualname__", repr(pickler.found))
        raise RuntimeError(f"Trainer({what}) pickles the module and Trainer for each new process, but {name} is "
                           "defined in this notebook/session, which those processes cannot import; move it into a "
                           ".py file and import it, or use strategy='ddp_notebook' (fork: nothing is pickled)")
    return buf.getvalue()


def _wait(procs: list[Any]) -> int | None:
    """Wait until every rank exited (None) or one failed (its index)."""
    from multiprocessing.connection import wait

    left = {p.sentinel: i for i, p in enumerate(procs)}
    while left:
        for sentinel in wait(list(left)):
            i = left.pop(sentinel)
            procs[i].join()
            if procs[i].exitcode != 0:
                return i
    return None


def _end(procs: list[Any], grace_s: float, sig: int | None = None) -> None:
    """Send ``sig`` to the ranks still running, wait up to ``grace_s``, SIGKILL what is left."""
    alive = [p for p in procs if p.pid is not None and p.exitcode is None]
    if sig is not None:
        for p in alive:
            _signal(p.pid, sig)
    deadline = time.monotonic() + grace_s
    for p in alive:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in alive:
        if p.exitcode is None:
            _signal(p.pid, signal.SIGKILL)
            p.join()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _raise_failure(procs: list[Any], failed: int, folder: str, what: str) -> None:
    """Raise the error of the rank that failed first (by the time it recorded), as one error."""
    records = []
    for r in range(len(procs)):
        try:
            with open(os.path.join(folder, _ERROR.format(r)), "rb") as f:
                records.append(pickle.load(f))
        except (OSError, EOFError, pickle.UnpicklingError):
            pass
    n = len(procs)
    if not records:
        code = procs[failed].exitcode
        how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        raise RuntimeError(f"Trainer({what}): rank {failed} of {n} {how} before it reported an error (its "
                           "output is above); a spawned rank that imports a script without an "
                           "`if __name__ == \"__main__\":` guard stops like this")
    first = min(records, key=lambda rec: rec.time)
    if first.exit_code is not None:
        raise SystemExit(first.exit_code)  # a signal stopped the run (128 + N), as in a launched job
    exc = first.exception()
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(f"(raised in rank {first.rank} of {n} started by Trainer({what}); the other ranks "
                     "were stopped; its traceback is above)")
    raise exc from RemoteTraceback(first.traceback)


# ---------------------------------------------------------------------------- what a rank gets
@dataclass
class _StartState:
    """What a rank restores before the job: the parent's RNG states (a forked child's
    ``random`` is reseeded by Python; a spawned one starts fresh) and torch's global flags,
    so the ranks start where a launched script's ranks would (Lightning's _GlobalStateSnapshot)."""
    rng: dict[str, Any]
    deterministic: bool
    deterministic_warn_only: bool
    cudnn_benchmark: bool
    default_dtype: torch.dtype

    @classmethod
    def capture(cls) -> _StartState:
        from distengine.checkpoint.rng import capture_rng_state

        return cls(capture_rng_state(), torch.are_deterministic_algorithms_enabled(),
                   torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark,
                   torch.get_default_dtype())

    def restore(self) -> None:
        from distengine.checkpoint.rng import restore_rng_state

        torch.use_deterministic_algorithms(self.deterministic, warn_only=self.deterministic_warn_only)
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.set_default_dtype(self.default_dtype)
        restore_rng_state(self.rng)


@dataclass
class _ErrorRecord:
    rank: int
    time: float
    traceback: str
    pickled: bytes | None       # the exception itself, when it pickles
    summary: str                # "TypeName: message", for one that does not
    exit_code: int | None = None  # a SystemExit (a graceful stop on a signal)

    def exception(self) -> BaseException:
        if self.pickled is not None:
            try:
                return pickle.loads(self.pickled)
            except Exception:  # noqa: BLE001 - a class the parent cannot rebuild: say what it was
                pass
        return RuntimeError(self.summary)


def _rank_main(rank: int, nprocs: int, port: int, parent: int, payload: Any, folder: str,
               cuda_visible_devices: str | None) -> None:
    """A rank's entry point (module level, so spawn can import it)."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # not the notebook's handler
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nprocs),
                       "LOCAL_WORLD_SIZE": str(nprocs), "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    if cuda_visible_devices is not None:  # before CUDA starts in this process (checked for fork)
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices
    if "OMP_NUM_THREADS" not in os.environ:  # as distengine launch and Lightning: the cores shared out
        os.environ["OMP_NUM_THREADS"] = str(max(1, usable_cpu_count() // nprocs))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    code = 0
    try:
        start, job = payload if isinstance(payload, tuple) else pickle.loads(payload)
        start.restore()
        result = job(rank)
        if rank == 0:
            tmp = os.path.join(folder, _RESULT + ".tmp")
            torch.save(result, tmp)
            os.replace(tmp, os.path.join(folder, _RESULT))
    except BaseException as exc:  # noqa: BLE001 - every way out is reported to the parent
        code = _record_error(rank, exc, folder)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if isinstance(payload, tuple):  # forked: multiprocessing ends the copy with os._exit, as it should
        sys.stdout.flush()
        sys.stderr.flush()
        sys.exit(code)
    # spawned: a new interpreter, whose teardown can abort in torch's gloo threads after a finished
    # run (exit -6, "terminate called without an active exception"; seen under load): end as a
    # launched rank does (threads, atexit, buffers, then os._exit)
    from distengine.launch.rank import finish

    finish(code)


def _record_error(rank: int, exc: BaseException, folder: str) -> int:
    import traceback

    exit_code = None
    if isinstance(exc, SystemExit):
        exit_code = exc.code if isinstance(exc.code, int) else 1
        if exit_code == 0:
            return 0
    try:
        pickled: bytes | None = pickle.dumps(exc)
    except Exception:  # noqa: BLE001 - an exception holding something unpicklable
        pickled = None
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    record = _ErrorRecord(rank, time.time(), text, pickled, f"{type(exc).__name__}: {exc}", exit_code)
    tmp = os.path.join(folder, _ERROR.format(rank) + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(record, f)
    os.replace(tmp, os.path.join(folder, _ERROR.format(rank)))
    return exit_code if exit_code is not None else 1


def _die_with_parent(parent: int) -> None:
    """SIGKILL this rank when the process that started it dies (a killed notebook kernel);
    see launch/rank.py's ``_die_with_launcher`` for why SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # it died before the call above
        os._exit(1)
