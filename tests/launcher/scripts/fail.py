"""Failure scenarios for the launcher tests, chosen by the MODE environment variable.

raise: rank 1 raises ValueError after joining the group; rank 0 waits in an all-reduce.
slow_exit: rank 1 raises, then on its way out closes its process group (rank 0's all-reduce fails
       at once) and takes 2 s more to exit (atexit).
hang:  rank 1 sleeps far longer than the collective timeout; rank 0 waits in an all-reduce.
exit0: rank 1 leaves with os._exit(0); rank 0 goes on to an all-reduce and loses its peer.
kill:  each rank starts a DataLoader worker, then all-reduces batches until it is killed.
escape: rank 1 starts `sleep 300` in a session of its own, writes its pid to OUT_DIR/escaped.pid,
       then raises; rank 0 waits in an all-reduce.
torn: rank 1 dies while writing its error file (TORCHELASTIC_ERROR_FILE), as a rank stopped in the
       middle of that write would: TORN=partial leaves half a JSON document and SIGKILLs itself,
       TORN=empty leaves an empty file and exits with 1; rank 0 waits in an all-reduce. In a
       restart (TORCHELASTIC_RESTART_COUNT > 0) both ranks just all-reduce and finish.
Every rank writes OUT_DIR/pids<K>.json (its pid and its dataloader workers' pids).
"""
import json
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist

torch.set_num_threads(1)
MODE = os.environ["MODE"]
OUT = os.environ.get("OUT_DIR", ".")
dist.init_process_group("gloo", timeout=timedelta(seconds=float(os.environ.get("DISTENGINE_TIMEOUT", "60"))))
rank = dist.get_rank()


def report_pids(workers=()):
    tmp = os.path.join(OUT, f"pids{rank}.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"rank": os.getpid(), "workers": list(workers)}, f)
    os.replace(tmp, os.path.join(OUT, f"pids{rank}.json"))


def fail_here():
    raise ValueError(f"boom from rank {rank}")


def sleeper():
    time.sleep(600)


if MODE != "kill":
    report_pids()
if MODE == "raise":
    if rank == 1:
        fail_here()
    dist.all_reduce(torch.ones(1))
elif MODE == "slow_exit":
    if rank == 1:
        import atexit

        atexit.register(time.sleep, 2.0)  # atexit runs last-in first-out: this runs second
        atexit.register(dist.destroy_process_group)
        fail_here()
    dist.all_reduce(torch.ones(1))
elif MODE == "exit0":
    if rank == 1:
        os._exit(0)
    time.sleep(0.5)  # rank 1 is gone by now: the all-reduce finds no peer
    dist.all_reduce(torch.ones(1))
elif MODE == "escape":
    if rank == 1:
        import subprocess

        child = subprocess.Popen(["sleep", "300"], start_new_session=True)
        with open(os.path.join(OUT, "escaped.pid.tmp"), "w") as f:
            f.write(str(child.pid))
        os.replace(os.path.join(OUT, "escaped.pid.tmp"), os.path.join(OUT, "escaped.pid"))
        fail_here()
    dist.all_reduce(torch.ones(1))
elif MODE == "torn":
    if rank == 1 and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        import signal

        with open(os.environ["TORCHELASTIC_ERROR_FILE"], "w") as f:
            if os.environ["TORN"] == "partial":
                f.write('{"message": {"message": "ValueError: boo')
        if os.environ["TORN"] == "partial":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(1)
    dist.all_reduce(torch.ones(1))
elif MODE == "hang":
    if rank == 1:
        sleeper()
    dist.all_reduce(torch.ones(1))
elif MODE == "kill":
    class Endless(torch.utils.data.IterableDataset):
        def __iter__(self):
            while True:
                yield torch.ones(4)

    loader = iter(torch.utils.data.DataLoader(Endless(), batch_size=2, num_workers=1))
    next(loader)  # the worker process is running now
    import psutil

    report_pids(c.pid for c in psutil.Process().children(recursive=True))
    while True:
        batch = next(loader)
        dist.all_reduce(batch)
