"""No distengine: 2 gloo ranks run 50 synchronous all_reduces (each waited for), then exit.

Under plain ``python`` a rank of this job aborts at exit (134) in about half the runs on a busy
2-core machine: torch frees each collective's tensor in a gloo thread after ``wait()`` returned,
and a thread that does so during interpreter shutdown takes the process down with it.
"""
import torch
import torch.distributed as dist

torch.set_num_threads(1)
dist.init_process_group("gloo")
for step in range(50):
    t = torch.full((4,), float(step))
    dist.all_reduce(t)
    assert t[0].item() == 2 * step
print(f"done rank {dist.get_rank()}", flush=True)
