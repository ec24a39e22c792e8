"""Two-rank smoke script: joins the gloo group, all-reduces its rank, reports its environment.

OUT_DIR: each rank writes rank<K>.json (its launcher-given environment, argv, pid, the sum).
HOLD=1:  after that, each rank writes ready<K> and waits until OUT_DIR/go exists (or a signal).
"""
import json
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

torch.set_num_threads(1)
dist.init_process_group("gloo", timeout=timedelta(seconds=float(os.environ.get("DISTENGINE_TIMEOUT", "60"))))
rank = dist.get_rank()
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
print(f"stdout line from rank {rank}: sum {t.item():g} args {sys.argv[1:]}", flush=True)
print(f"stderr line from rank {rank}", file=sys.stderr, flush=True)
out = os.environ.get("OUT_DIR")
if out:
    keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
            "TORCHELASTIC_RESTART_COUNT", "DISTENGINE_ACCELERATOR", "DISTENGINE_TIMEOUT", "PYTHONFAULTHANDLER",
            "GLOO_SOCKET_IFNAME", "CUDA_VISIBLE_DEVICES"]
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"env": {k: os.environ.get(k) for k in keys}, "sum": t.item(), "argv": sys.argv,
                   "pid": os.getpid()}, f)
    if os.environ.get("HOLD") == "1":
        open(os.path.join(out, f"ready{rank}"), "w").close()
        while not os.path.exists(os.path.join(out, "go")):  # the test inspects the job meanwhile
            time.sleep(0.05)
dist.barrier()
dist.destroy_process_group()
