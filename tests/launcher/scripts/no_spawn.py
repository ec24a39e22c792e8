"""Run ``distengine launch ARGS`` or ``SCRIPT ARGS`` with process creation recorded and refused.

    python no_spawn.py RECORD launch --cpus 999 train.py
    python no_spawn.py RECORD train.py --lr 0.1

Every attempt to start a process (subprocess, multiprocessing, os.fork, posix_spawn) appends a
line to RECORD and fails with OSError instead. A test can therefore check that a bad input is
refused before anything is started, and a regression cannot start 999 processes on the machine.

``ctypes.util.find_library`` is the one exception to the record (still refused): it looks a
library up by running ldconfig/gcc/ld, and gets by without them. ``import torch`` does that on
torch 2.14.1 (``torch.cuda`` imports ``cuda.pathfinder``, which asks for ``find_library("dl")``);
torch 2.11 and 2.13 do not.
"""
from __future__ import annotations

import _posixsubprocess
import ctypes.util
import os
import runpy
import sys


def main() -> int:
    record, target, args = sys.argv[1], sys.argv[2], sys.argv[3:]

    probing = []  # non-empty while ctypes.util.find_library runs

    def refuse(what):
        def blocked(*a, **kw):
            if not probing:
                with open(record, "a") as f:
                    f.write(f"{what} {a[:2]!r}\n")
            raise OSError(f"no_spawn: {what} refused")
        return blocked

    find_library = ctypes.util.find_library

    def quiet_find_library(name):
        probing.append(name)
        try:
            return find_library(name)
        finally:
            probing.pop()

    ctypes.util.find_library = quiet_find_library

    _posixsubprocess.fork_exec = refuse("fork_exec")  # subprocess.Popen, multiprocessing spawn
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "spawnv", "spawnve", "system"):
        if hasattr(os, name):
            setattr(os, name, refuse(name))
    if target == "launch":
        from distengine.launch.cli import main as cli_main

        return cli_main(["launch", *args])
    sys.argv = [target, *args]  # what `python SCRIPT ARGS` would see (the Trainer re-runs argv[0])
    runpy.run_path(target, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
