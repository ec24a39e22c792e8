"""One rank of the model parallel benchmark (benchmarks/model_parallel.py starts 4 of them under torchrun).

Interleaved rounds (every rank runs the same seeded order) of three contenders, each training the
Llama-style model of benchmarks/_llama.py from the same seed on the same data with AdamW:

- ``tp_loop``: hand-written: ``init_device_mesh((2, 2))``, ``parallelize_module`` + ``fully_shard``
  (benchmarks/_llama.py's ``parallelize``), a ``DistributedSampler`` over the data-parallel groups;
- ``tp_trainer``: ``Trainer(strategy=ModelParallelStrategy(2, 2))``, the module's ``configure_model``
  applying the same ``parallelize``;
- ``fsdp_trainer``: ``Trainer(strategy=FSDPStrategy(auto_wrap_policy={Block}))`` over the 4 ranks
  (the same global batch: half a data-parallel group's batch a rank).

Each records its losses, the steady-state wall and CPU seconds from step ``warm`` to the end of
the last step, and the bytes of parameters + gradients + optimizer state after the last
``optimizer.step()`` (benchmarks/_fsdp_plain.py's ``Record`` and ``state_bytes``). Rank zero writes
everything to ``--report-json``.

    torchrun --standalone --nproc-per-node 4 benchmarks/_mp_worker.py --report-json /tmp/mp.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback
from typing import Any

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _llama as llama  # noqa: E402
from benchmarks._fsdp_plain import Record, state_bytes  # noqa: E402
from benchmarks._harness import interleave  # noqa: E402

CONTENDERS = ("tp_loop", "tp_trainer", "fsdp_trainer")
CPU = torch.device("cpu")


def tp_loop(work: llama.Work) -> Record:
    """What a PyTorch user writes for TP 2 x DP 2, no distengine import."""
    from torch.distributed.device_mesh import init_device_mesh

    rec = Record()
    mesh = init_device_mesh("cpu", (work.dp, dist.get_world_size() // work.dp),
                            mesh_dim_names=("data_parallel", "tensor_parallel"))
    model = work.model()
    llama.parallelize(model, mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=llama.LR)
    dp = mesh["data_parallel"]
    sampler = DistributedSampler(work.data(), num_replicas=dp.size(), rank=dp.get_local_rank(), shuffle=False)
    for i, (x, y) in enumerate(DataLoader(work.data(), batch_size=work.batch, sampler=sampler)):
        if i == work.warm:
            rec.start(CPU)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        if i == work.steps - 1:
            rec.bytes = state_bytes(model.parameters(), [optimizer])
        optimizer.zero_grad(set_to_none=True)
        rec.losses.append(loss.detach())
    rec.stop(CPU)
    rec.losses = [float(v) for v in rec.losses]
    return rec


def trainer(work: llama.Work, layout: str) -> Record:
    """The Trainer side, through distengine's public API only."""
    import distengine as de
    from benchmarks._fsdp_trainer import _probe
    from distengine.strategies import FSDPStrategy, ModelParallelStrategy

    rec = Record()

    class LM(llama.LlamaNet, de.Module):
        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.mse_loss(self(x), y)
            rec.losses.append(loss.detach())
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=llama.LR)

    class TPLM(LM):
        def configure_model(self):
            llama.parallelize(self, self.device_mesh)

    if layout == "tp":
        module, batch = TPLM(**work.cfg), work.batch
        strategy: Any = ModelParallelStrategy(data_parallel_size=work.dp,
                                              tensor_parallel_size=dist.get_world_size() // work.dp)
    else:
        module, batch = LM(**work.cfg), work.batch * work.dp // dist.get_world_size()
        strategy = FSDPStrategy(auto_wrap_policy={llama.Block})
    t = de.Trainer(accelerator="cpu", strategy=strategy, max_epochs=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   callbacks=[_probe(work, rec, CPU)])
    t.fit(module, DataLoader(work.data(), batch_size=batch, shuffle=False))
    rec.losses = [float(v) for v in rec.losses]
    return rec


def _gather(value: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="full", choices=sorted(llama.SIZES))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warm", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup-rounds", type=int, default=1)
    p.add_argument("--report-json", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    work = llama.Work(size=args.size, batch=args.batch, steps=args.steps, warm=args.warm)
    runners = {"tp_loop": lambda: tp_loop(work), "tp_trainer": lambda: trainer(work, "tp"),
               "fsdp_trainer": lambda: trainer(work, "fsdp")}
    report: dict[str, Any] = {"work": vars(args), "world_size": dist.get_world_size(),
                              "num_params": sum(p.numel() for p in work.model().parameters())}
    start = time.perf_counter()
    try:
        report["rounds"] = interleave({n: (lambda f=f: {"ranks": _gather(f().to_dict())}) for n, f in runners.items()},
                                      rounds=args.rounds, warmup=args.warmup_rounds)
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        raise
    finally:
        report["seconds"] = time.perf_counter() - start
        if dist.get_rank() == 0:
            with open(args.report_json + ".tmp", "w") as f:
                json.dump(report, f, default=str)
            os.replace(args.report_json + ".tmp", args.report_json)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # end as distengine's ranks do (distengine/launch/rank.py): a gloo worker thread freeing a
    # tensor during interpreter teardown can abort a finished rank ("terminate called without an
    # active exception", exit -6; pytorch/pytorch#190489), which failed this job once under load
    from distengine.launch.rank import finish

    finish(0)
