"""Child process for the crash-injection tests: write a checkpoint, then die mid-write.

usage: crash_write.py PATH MODE [ARG]
  MODE=xfsz  ARG=N : the second write is killed by SIGXFSZ when the file reaches N bytes
  MODE=fsync       : the second write is fully written, then SIGKILL before the rename
  MODE=loop        : keep overwriting PATH forever (the parent SIGKILLs us at some byte)
The first write always stores {"version": 1, "w": arange(1000)} and a last.json pointer.
"""
import os
import resource
import signal
import sys

import torch

from distengine.checkpoint import io

path, mode = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
io.atomic_save({"version": 1, "w": torch.arange(1000)}, path)
io.write_last_pointer(os.path.dirname(path), path)
big = {"version": 2, "w": torch.arange(1000), "pad": torch.ones(1 << 18)}  # ~1 MiB

if mode == "xfsz":
    # Python ignores SIGXFSZ (a write past the limit would just fail with EFBIG and our cleanup
    # would run); restore the default action so the process dies at that exact byte instead.
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    limit = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    io.atomic_save(big, path)
elif mode == "fsync":
    def die(fd):
        os.kill(os.getpid(), signal.SIGKILL)
    os.fsync = die
    io.atomic_save(big, path)
elif mode == "loop":
    huge = {"version": 2, "w": torch.arange(1000), "pad": torch.ones(16 << 20)}  # 64 MiB
    print("ready", flush=True)
    while True:
        io.atomic_save(huge, path)
sys.exit(3)  # not reached when the crash happened as planned
