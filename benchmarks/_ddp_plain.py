"""The hand-written DDP contender: what a PyTorch user writes to run under ``torchrun``.

It does the same work as ``examples/synthetic.py --features off``: the same data, model
(same seed), SGD, batch size per rank and epochs, with a DistributedSampler and DDP when
``WORLD_SIZE > 1`` (and a plain loop when started as ``python`` alone). Rank zero writes
the fit time (process-group set-up included, as in the Trainer's case) to ``--report-json``.

    torchrun --standalone --nproc-per-node 2 benchmarks/_ddp_plain.py --report-json /tmp/p.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._work import build_mlp, make_dataset  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--max-epochs", type=int, default=2)
    p.add_argument("--num-samples", type=int, default=12_800)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)

    data = make_dataset(args.num_samples, args.dim, seed=args.seed)
    torch.manual_seed(args.seed)
    model = build_mlp(args.dim, args.hidden)

    start = time.perf_counter()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
        model = DistributedDataParallel(model)
        sampler = DistributedSampler(data, shuffle=True, seed=args.seed)
        loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler)
    else:
        sampler = None
        loader = DataLoader(data, batch_size=args.batch_size, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = 0
    for epoch in range(args.max_epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            steps += 1
    fit_s = time.perf_counter() - start

    rank = dist.get_rank() if world > 1 else 0
    if world > 1:
        dist.destroy_process_group()
    if rank == 0 and args.report_json:
        with open(args.report_json + ".tmp", "w") as f:
            json.dump({"fit_s": fit_s, "world_size": world, "global_step": steps,
                       "samples_per_s": args.num_samples * args.max_epochs / fit_s}, f)
        os.replace(args.report_json + ".tmp", args.report_json)


if __name__ == "__main__":
    main()
