"""``distengine launch --debug``: run the script once, in THIS process, like ``python script.py``.

No agent and no child process, so ``breakpoint()``/pdb, stack traces and profilers behave
exactly as they do for a plain script. ``DISTENGINE_DEBUG=1`` tells the Trainer to turn on
anomaly detection and synchronous CUDA errors and to run only a few batches per loop.

Example::

    $ distengine launch --debug --cpus 2 train.py --lr 0.1     # one process, rank 0 of 1
"""
from __future__ import annotations

import os
import runpy
import sys
import types

from distengine.launch.config import LaunchOptions, UsageError

# runpy's frames show up as "<frozen runpy>" (frozen stdlib) or as its source file.
_LAUNCHER_FILES = (os.path.dirname(os.path.abspath(__file__)), runpy.__file__.rstrip("c"), "<frozen runpy>")


def debug_environment(opts: LaunchOptions) -> dict[str, str]:
    """The variables debug mode sets (the script sees no RANK/WORLD_SIZE: it is one process)."""
    env = {"DISTENGINE_DEBUG": "1", "CUDA_LAUNCH_BLOCKING": "1"}
    if opts.accelerator == "cpu":
        env["DISTENGINE_ACCELERATOR"] = "cpu"
    if opts.timeout is not None:
        env["DISTENGINE_TIMEOUT"] = f"{opts.timeout:g}"
    return env


def _user_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    # Drop the launcher's and runpy's own frames so the trace starts in the user's code,
    # as it would under "python script.py".
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_LAUNCHER_FILES):
        tb = tb.tb_next
    return tb


# Set while a debug run is in progress: a launch from inside it (a script that re-launches
# itself, e.g. Trainer(devices=2)) would otherwise start a debug run within a debug run, forever.
ACTIVE_MARKER = "DISTENGINE_DEBUG_ACTIVE"
# Set once the run said it is one process in place of several (the Trainer reads it too).
ANNOUNCED_MARKER = "DISTENGINE_DEBUG_ANNOUNCED"


def check_not_nested() -> None:
    """Raise :class:`UsageError` when called from inside a ``--debug`` run."""
    if os.environ.get(ACTIVE_MARKER) == "1":
        raise UsageError("the script tried to launch itself again from inside a --debug run (for example "
                         "Trainer(devices=N)); in --debug use devices=1 or 'auto'")


def run_in_process(opts: LaunchOptions) -> int:
    """Run ``opts.script`` as ``__main__`` in this process; return its exit status."""
    if opts.nproc > 1:
        print(f"distengine launch --debug: running 1 process in place of {opts.nproc} "
              "(rank 0 of 1, in this process)", file=sys.stderr, flush=True)
        os.environ[ANNOUNCED_MARKER] = "1"  # a Trainer(devices=N) in the script does not say it again
    os.environ.update(debug_environment(opts))
    os.environ[ACTIVE_MARKER] = "1"
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
        os.environ.pop(name, None)  # a leftover job environment would make the Trainer wait for peers
    if opts.module:
        sys.argv = [opts.script, *opts.script_args]
        sys.path.insert(0, os.getcwd())
    else:
        sys.argv = [opts.script, *opts.script_args]
        sys.path.insert(0, os.path.dirname(os.path.abspath(opts.script)))
    try:
        if opts.module:
            runpy.run_module(opts.script, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(opts.script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except BaseException as exc:  # noqa: BLE001 - report like the interpreter would, then fail
        trimmed = _user_frames(exc.__traceback__)
        # The interpreter prints exc.__traceback__, whatever tb is passed: trim it on the exception.
        sys.excepthook(type(exc), exc.with_traceback(trimmed), trimmed)
        return 130 if isinstance(exc, KeyboardInterrupt) else 1
    return 0
