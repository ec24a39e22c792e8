"""What every rank process runs: the user's script, then an exit that torch's teardown cannot crash.

``python -m distengine.launch.rank [-m] TARGET ARGS...`` runs TARGET as ``python TARGET ARGS...``
(or ``python -m TARGET ARGS...``) would: the same ``sys.argv``, ``sys.path[0]`` and ``__main__``
module. Only the way a script that has *finished* leaves the process is different.

Why. With a gloo process group, a collective's tensors are freed by the gloo worker thread
(``pt_gloo_runloop``) that ran it, after the caller's ``wait()`` has already returned. Freeing a
tensor that Python created takes the GIL. If the main thread has meanwhile started interpreter
shutdown, CPython ends the thread that asks for the GIL with ``pthread_exit``; the unwinding
runs into torch's ``noexcept`` decref and calls ``std::terminate``: the rank prints
"terminate called without an active exception", aborts, and a finished job exits 134
(pytorch/pytorch#190489). A plain torch script whose every ``all_reduce`` was waited for died
this way in 20 of 40 runs on a loaded 2-core machine. Nothing a script does in Python can rule
it out: the worker threads are joined only when the process group's last reference goes, and a
DDP or FSDP module, or the user's own objects, may hold one until shutdown.

So when the script ends (returns, or raises ``SystemExit``), this entry point does what
interpreter shutdown does that a program can observe: it joins the non-daemon threads, runs the
``atexit`` callbacks and flushes open files and stdio. Then it ends the process with
``os._exit`` and the script's own exit status, skipping only the freeing of every remaining
object and the C++ static destructors, which is where the crash happens. (``multiprocessing``
ends its child processes the same way.) An uncaught exception is not covered: it is printed as
Python prints it (without this module's frames) and the process exits 1 through the normal
shutdown.

Example (the elastic agent starts each rank like this)::

    python -u -m distengine.launch.rank train.py --lr 0.1
"""
from __future__ import annotations

import atexit
import gc
import io
import os
import runpy
import sys
import threading

_USAGE = "usage: python -m distengine.launch.rank [-m] TARGET [ARGS...]"


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    as_module = args[:1] == ["-m"]
    if as_module:
        args = args[1:]
    if not args:
        print(_USAGE, file=sys.stderr)
        raise SystemExit(2)
    target, script_args = args[0], args[1:]
    _die_with_launcher()
    try:
        _run(target, script_args, as_module)
    except SystemExit as exc:
        status = _status_of(exc.code)
    except Exception as exc:  # noqa: BLE001 - printed as Python would, then a failed exit
        exc = exc.with_traceback(_without_own_frames(exc.__traceback__))
        sys.excepthook(type(exc), exc, exc.__traceback__)
        _record_for_the_launcher(exc)
        _flush_open_files()
        raise SystemExit(1) from None
    else:
        status = 0
    finish(status)


def _record_for_the_launcher(exc: BaseException) -> None:
    """Write the error file the launcher gave this rank (TORCHELASTIC_ERROR_FILE, torch's format, as
    ``@record`` does) the moment the exception escapes: the launcher then knows this rank failed
    on its own, and first, even while it is still on its way out (its peers may fail on the
    closed connection before it has exited).

    The file appears whole or not at all: torch's handler writes it in place, and a rank stopped
    in the middle of that write (the launcher tearing the job down) would leave half a document.
    So the handler writes a file beside it, which is then renamed over the path the launcher gave."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    partial = f"{path}.{os.getpid()}.partial"
    try:
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        os.environ["TORCHELASTIC_ERROR_FILE"] = partial  # where torch's handler writes (public variable)
        get_error_handler().record_exception(exc)
        os.replace(partial, path)
    except Exception as err:  # noqa: BLE001 - the report falls back on the rank's log
        print(f"distengine: could not write this rank's error file ({err})", file=sys.stderr, flush=True)
    finally:
        os.environ["TORCHELASTIC_ERROR_FILE"] = path


def _die_with_launcher() -> None:
    """Ask Linux to SIGKILL this rank the moment the launcher that started it dies.

    A launcher can die without cleaning up (SIGKILL, the OOM killer, a crashed node agent). Its
    ranks would otherwise train on as orphans, write checkpoints that a restarted job may be
    reading, and have no one to read their output. The parent-death signal fires when the
    launcher's thread that started the rank ends; torch's agent starts every rank from the
    launcher's main thread, which lives as long as the launcher does. SIGKILL, not SIGTERM:
    a graceful stop needs every peer to agree and would write one more checkpoint, which is
    what must not happen now; the last checkpoint on disk is complete (atomic writes).

    The launcher may die between the rank's start and this call; then the signal never comes,
    and the parent is no longer the launcher: the rank leaves at once with a line saying why.
    """
    launcher = os.environ.get("DISTENGINE_LAUNCHER_PID", "")
    if not launcher.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
        print(f"distengine: warning: prctl(PR_SET_PDEATHSIG) failed (errno {ctypes.get_errno()}); "
              "this rank will not stop by itself if its launcher is killed", file=sys.stderr, flush=True)
        return
    if os.getppid() != int(launcher):
        print(f"distengine: the launcher (pid {launcher}) is gone before this rank started; exiting",
              file=sys.stderr, flush=True)
        os._exit(1)


def _run(target: str, script_args: list[str], as_module: bool) -> None:
    sys.argv = [target, *script_args]
    if as_module:
        # like `python -m TARGET`: sys.path[0] is already the working directory
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        # like `python TARGET`: the script's own directory comes first on sys.path
        sys.path[0] = os.path.dirname(os.path.realpath(target))
        runpy.run_path(target, run_name="__main__")


def finish(status: int) -> None:
    """End a process whose program has finished: the observable part of interpreter shutdown,
    in the same order (threads, ``atexit``, buffers), then ``os._exit(status)``."""
    _join_non_daemon_threads()
    atexit._run_exitfuncs()  # prints and skips a failing callback, as at a normal exit
    _flush_open_files()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or broken stream has nothing left to write
            pass
    os._exit(status)


def _status_of(code: object) -> int:
    """The exit status Python gives ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _join_non_daemon_threads() -> None:
    # Python waits for these before running atexit callbacks (a background checkpoint write,
    # for example); a thread may start another while it ends, hence the loop.
    while True:
        pending = [t for t in threading.enumerate()
                   if t is not threading.main_thread() and not t.daemon and t.is_alive()]
        if not pending:
            return
        for thread in pending:
            thread.join()


def _flush_open_files() -> None:
    # At a normal exit a file the program never closed is flushed when it is freed; os._exit
    # frees nothing, so write out what such files still buffer.
    # (type checks only: isinstance against io's abstract classes would run their hooks on
    # every object in the process, which is slow and can touch lazy module attributes)
    buffered = (io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom)
    for obj in gc.get_objects():
        if issubclass(type(obj), buffered) and obj is not sys.stdout and obj is not sys.stderr:
            try:
                if not obj.closed and obj.writable():
                    obj.flush()
            except Exception:  # noqa: BLE001 - as at a normal exit, a failed flush is not fatal
                pass


def _without_own_frames(tb):
    """The traceback from the user's code on: this module's and runpy's frames dropped."""
    own = {os.path.realpath(__file__), os.path.realpath(runpy.__file__), "<frozen runpy>"}
    while tb is not None and (tb.tb_frame.f_code.co_filename in own
                              or os.path.realpath(tb.tb_frame.f_code.co_filename) in own):
        tb = tb.tb_next
    return tb


if __name__ == "__main__":
    main()
