"""The job of the resume-agreement tests (tests/checkpoint/test_resume_agreement.py), run on 2
gloo ranks by ``tests.helpers.run_ranks``: an uninterrupted 2-epoch fit, then a 1-epoch fit
that saves checkpoints, then ``Trainer(max_epochs=2).fit(..., ckpt_path="last")``.

96 samples in batches of 8 on 2 ranks: 6 batches (and optimizer steps) per epoch per rank.
Where the last checkpoint of the 1-epoch fit lands (``point``):

* ``last_batch``: ``every_n_train_steps=2``: steps 2, 4, 6; step 6 is the epoch's last batch
  (saved in ``on_train_batch_end``, before the epoch-end work);
* ``mid_epoch``: ``every_n_train_steps=4``: step 4 only (the fit goes on to step 6 unsaved, as
  if it had crashed there);
* ``epoch_end``: the default epoch trigger: at the end of epoch 0 (step 6, epoch done).

The ModelCheckpoint is given its ``dirpath``: without one, it broadcasts the folder it finds at
the start of each fit, a collective that happens to line the ranks up before they resolve
``"last"`` (before the fix, 3 of 6 FSDP + async + last-batch runs hung with a dirpath, 0 of 6 without).

Run by hand (loops the FSDP + async + last-batch case)::

    python -m tests.checkpoint.resume_job --runs 10 [--strategy fsdp] [--sync] [--point last_batch]
"""
from __future__ import annotations

import os
import time
from typing import Any

import torch
from torch import nn

N_SAMPLES, BATCH, D = 96, 8, 8
STEPS_PER_EPOCH = N_SAMPLES // BATCH // 2
POINTS = ("last_batch", "mid_epoch", "epoch_end")


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(D, 2 * D), nn.Linear(2 * D, D)

    def forward(self, x):
        return x + self.fc2(torch.tanh(self.fc1(x)))


def _module():
    import distengine as de

    class Net(de.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.blocks = nn.Sequential(Block(), Block())
            self.head = nn.Linear(D, 1)

        def forward(self, x):
            return self.head(self.blocks(x))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self(x), y)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=0.02)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.7)}

    return Net()


def _loader():
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(N_SAMPLES, D, generator=g)
    ds = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True).sin())
    return torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True)


def _strategy(name: str) -> Any:
    if name == "fsdp":
        from distengine.strategies.fsdp import FSDPStrategy

        return FSDPStrategy(auto_wrap_policy={Block})
    return "auto"  # DDP on 2 ranks


def _trainer(root: str, strategy: str, max_epochs: int, callbacks: list[Any]) -> Any:
    import distengine as de

    return de.Trainer(max_epochs=max_epochs, strategy=_strategy(strategy), accelerator="cpu", logger=False,
                      enable_checkpointing=bool(callbacks), callbacks=callbacks, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=root)


def _checkpoint(point: str, async_save: bool, dirpath: str | None) -> Any:
    from distengine.callbacks.model_checkpoint import ModelCheckpoint

    every = {"last_batch": 2, "mid_epoch": 4, "epoch_end": None}[point]
    return ModelCheckpoint(dirpath=dirpath, every_n_train_steps=every, save_top_k=-1, save_last=True,
                           async_save=async_save)


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    from distengine.strategies.fsdp import full_tensor

    return {k: full_tensor(v).detach().clone() for k, v in module.state_dict().items()}


def fit_twice(rank: int, root: str, strategy: str, async_save: bool, point: str, baseline: bool = True,
              ckpt_for: Any = None, dirpath: bool = True) -> dict[str, Any]:
    """One run on this rank. ``ckpt_for(rank, checkpoint_dir)`` gives the resume's ``ckpt_path``
    on this rank (default ``"last"``); an error of the resumed fit is returned (``error``, with
    ``error_s``, the seconds the fit took to raise it), not raised. ``dirpath``: the
    ModelCheckpoint is given its folder (else it finds it by itself, which holds a collective
    at the start of each fit)."""
    import distengine as de

    out: dict[str, Any] = {}
    if baseline:
        de.seed_everything(7)
        model = _module()
        _trainer(os.path.join(root, "base"), strategy, 2, []).fit(model, _loader())
        out["base"] = _weights(model)
    run = os.path.join(root, "run")
    folder = os.path.join(run, "checkpoints") if dirpath else None
    de.seed_everything(7)
    first = _trainer(run, strategy, 1, [_checkpoint(point, async_save, folder)])
    first.fit(_module(), _loader())
    out["first_step"] = first.global_step
    ckpt_path = "last" if ckpt_for is None else ckpt_for(rank, os.path.join(run, "checkpoints"))
    de.seed_everything(7)
    model = _module()
    second = _trainer(run, strategy, 2, [_checkpoint(point, async_save, folder)])
    began = time.monotonic()
    try:
        second.fit(model, _loader(), ckpt_path=ckpt_path)
    except Exception as exc:  # noqa: BLE001 - the test reads it
        if ckpt_for is None:
            raise
        out["error"], out["error_s"] = f"{type(exc).__name__}: {exc}", time.monotonic() - began
        return out
    out["resume_s"] = time.monotonic() - began
    out["step"], out["epoch"] = second.global_step, second.current_epoch
    out["resumed"] = _weights(model)
    return out


def check(out: dict[str, Any], base: dict[str, torch.Tensor], point: str) -> list[str]:
    """What is wrong with one run's result (empty: nothing)."""
    problems = []
    if out["first_step"] != STEPS_PER_EPOCH:
        problems.append(f"the first fit ended at step {out['first_step']}, not {STEPS_PER_EPOCH}")
    if (out["step"], out["epoch"]) != (2 * STEPS_PER_EPOCH, 2):
        problems.append(f"the resumed fit ended at step {out['step']} epoch {out['epoch']}, "
                        f"not step {2 * STEPS_PER_EPOCH} epoch 2")
    differ = [k for k in base if not torch.equal(base[k], out["resumed"][k])]
    if differ:
        problems.append(f"final weights differ from the uninterrupted run in {differ}")
    return problems


def all_cases(rank: int, root: str, strategies: tuple[str, ...] = ("ddp", "fsdp")) -> dict[str, list[str]]:
    """Every case once (sync and async saves, each resume point) per strategy, in one job:
    the problems found in each (empty lists: all good)."""
    found: dict[str, list[str]] = {}
    for strategy in strategies:
        base = None
        for async_save in (False, True):
            for point in POINTS:
                name = f"{strategy}-{'async' if async_save else 'sync'}-{point}"
                out = fit_twice(rank, os.path.join(root, name), strategy, async_save, point, baseline=base is None)
                base = out.get("base", base)
                found[name] = check(out, base, point)
    return found


def main() -> None:
    import argparse

    from tests.helpers import run_ranks

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--strategy", default="fsdp", choices=("fsdp", "ddp"))
    ap.add_argument("--sync", action="store_true")
    ap.add_argument("--point", default="last_batch", choices=POINTS)
    ap.add_argument("--timeout", type=float, default=90)
    ap.add_argument("--no-dirpath", action="store_true")
    args = ap.parse_args()
    import tempfile

    failures = 0
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            began = time.monotonic()
            try:
                res = run_ranks(fit_twice, 2, tmp, args.strategy, not args.sync, args.point, False, None,
                                not args.no_dirpath, timeout=args.timeout, env={"DISTENGINE_TIMEOUT": "20"})
                status = f"ok step={res[0]['step']}/{res[1]['step']}"
                if res[0]["step"] != res[1]["step"]:
                    failures += 1
                    status = "FAILED " + status
            except AssertionError as exc:
                failures += 1
                status = "FAILED " + str(exc).strip().splitlines()[0][:300]
            print(f"run {i}: {status} ({time.monotonic() - began:.1f}s)", flush=True)
    print(f"{failures} of {args.runs} failed", flush=True)


if __name__ == "__main__":
    main()
