"""The GPU check's ``ModelParallelStrategy`` check on ONE device (``mp1-tp-fsdp``).

``Trainer(strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1))`` in this
process (a mesh of 1 x 1 through the Trainer's own process-group set-up) trains the Llama-style
model of benchmarks/_llama.py (tests/fsdp/llama.py's blocks, RMSNorm, causal attention, SwiGLU)
whose ``configure_model`` applies the same plan (``parallelize_module`` then ``fully_shard``) as
a hand-written loop on its own 1 x 1 mesh:

- fp32 (``precision="32-true"``): the per-step losses equal the loop's within 1e-5 (absolute);
- ``precision="bf16-mixed"``: the losses are finite (the strategy passes no mixed-precision
  policy to the user's ``fully_shard``: the Trainer's autocast computes in bf16).

What needs more than one GPU is printed, not run: tensor parallel > 1 (the column/row-wise
layers' collectives over NCCL) and HSDP across replicas (gradients all-reduced between replica
groups). On the CPU (gloo) tests/fsdp/test_model_parallel.py runs them on 4 ranks.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.utils.data import DataLoader

from benchmarks import _llama as llama
from benchmarks._gpu_fsdp1 import loop_mesh, one_process

Result = tuple[bool | None, str, dict]
FP32_TOL = 1e-5
MULTI_GPU = ("needs more than one GPU, not checked here: ModelParallelStrategy with tensor_parallel_size > 1 "
             "(TP collectives over NCCL) and HSDP across replicas (FSDPStrategy(sharding_strategy="
             "'HYBRID_SHARD', device_mesh=(replicas > 1, shard))); run tests/fsdp/test_model_parallel.py's "
             "layouts on 2+ GPUs for them")


def work(s: Any) -> llama.Work:
    return llama.Work(size="quick" if s.dry_run else "full", batch=4 if s.dry_run else 16, dp=1, steps=6)


def trainer_losses(s: Any, w: llama.Work, precision: str) -> list[float]:
    import distengine as de
    from distengine.strategies import ModelParallelStrategy

    losses: list[torch.Tensor] = []

    class LM(llama.LlamaNet, de.Module):
        def configure_model(self):
            llama.parallelize(self, self.device_mesh)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.mse_loss(self(x), y)
            losses.append(loss.detach())
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=llama.LR)

    t = de.Trainer(accelerator=s.accelerator, devices=1, precision=precision,
                   strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1), max_epochs=1,
                   logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0)
    t.fit(LM(**w.cfg), DataLoader(w.data(), batch_size=w.batch, shuffle=False))
    return [float(v) for v in losses]


def loop_losses(s: Any, w: llama.Work) -> list[float]:
    """What a PyTorch user writes: the same plan on a 1 x 1 mesh, AdamW, fp32."""
    from torch.distributed.device_mesh import init_device_mesh

    losses: list[torch.Tensor] = []
    with loop_mesh(s.device):
        mesh = init_device_mesh(s.device.type, (1, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
        model = w.model().to(s.device)
        llama.parallelize(model, mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=llama.LR)
        for x, y in DataLoader(w.data(), batch_size=w.batch, shuffle=False):
            loss = F.mse_loss(model(x.to(s.device)), y.to(s.device))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
    return [float(v) for v in losses]


@one_process
def check_mp1(s: Any) -> Result:
    w = work(s)
    trainer32 = trainer_losses(s, w, "32-true")
    if dist.is_initialized():  # the loop makes its own group
        dist.destroy_process_group()
    loop32 = loop_losses(s, w)
    bf16 = trainer_losses(s, w, "bf16-mixed")
    print(f"note mp1-tp-fsdp: {MULTI_GPU}", flush=True)
    diff = max((abs(a - b) for a, b in zip(trainer32, loop32)), default=math.inf)
    same = len(trainer32) == len(loop32) == w.steps and diff <= FP32_TOL
    finite = len(bf16) == w.steps and all(math.isfinite(v) for v in bf16)
    gap = max((abs(a - b) for a, b in zip(bf16, trainer32)), default=0.0)  # > 0: autocast computed in bf16
    msg = (f"ModelParallelStrategy(1, 1), {w.size} Llama, {w.steps} steps: fp32 losses vs the hand-written "
           f"TP x FSDP2 loop max |diff| {diff:.2e} (<= {FP32_TOL:g}); bf16-mixed losses "
           f"{'finite' if finite else 'NOT finite'} ({bf16[0]:.4f} -> {bf16[-1]:.4f}, max |bf16 - fp32| "
           f"{gap:.1e}); {MULTI_GPU}")
    return same and finite, msg, {"trainer_fp32": trainer32, "loop_fp32": loop32, "trainer_bf16": bf16,
                                  "max_abs_diff": diff, "bf16_gap": gap, "multi_gpu": MULTI_GPU}
