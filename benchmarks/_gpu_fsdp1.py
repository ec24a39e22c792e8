"""The GPU check's FSDP2 checks on ONE device: ``Trainer(strategy="fsdp")`` in this process, on
a device mesh of 1, through the Trainer's own process-group set-up (no group is made for it:
each check starts with none, and removes one a Trainer left behind when it ends).

Each function returns ``(ok, message, data)``; ``ok`` None is a SKIP, which is what every check
says while the Trainer refuses one rank (``strategy='fsdp' needs 2 or more processes``).
``--dry-run-cpu`` runs the same code on the CPU (gloo), tiny; there speed, peak memory, host
syncs and pinning are reported as not measured and only machine-independent results are judged.

- ``fsdp1-bf16``: the Trainer in bf16-mixed against a hand-written ``fully_shard`` loop on a
  mesh of 1 (the same LM as the precision checks): loss per step (mean relative, <= 2e-2),
  tokens/s (>= 0.95x), ``torch.cuda.max_memory_allocated`` (<= 1.05x), host syncs per step
  (0, counted as the sync-free check does: a 30-step run minus a 10-step run).
- ``fsdp1-target-dtype``: a float regression target stays float32 in ``training_step`` under
  FSDP bf16-mixed, while the forward computes in bf16.
- ``fsdp1-16-mixed-inf``: an infinite loss at step 3 in 16-mixed: the step is skipped (one more
  GradScaler skip than the clean run); syncs per step 1 with AdamW, 0 with a fused AdamW.
- ``fsdp1-clip``: ``gradient_clip_val``: the norm the strategy's clipping returns equals the
  loop's ``clip_grad_norm_`` at every step, and the trained weights match.
- ``fsdp1-accumulate``: ``accumulate_grad_batches=4``: FSDP reduces each unit's gradients
  once per window (FSDP2's ``foreach_reduce`` counted; its reduce-scatter collective also
  counted by wrapping ``torch.distributed``: one rank copies instead of calling it).
- ``fsdp1-act-ckpt``: activation checkpointing on every block: peak memory <= 0.7x of the
  same fit without; the same losses.
- ``fsdp1-meta-init``: ``configure_model`` builds the model on ``meta`` with a RoPE
  ``inv_freq`` buffer: after the strategy's init the buffer holds the right values.
- ``fsdp1-cpu-offload``: ``FSDPStrategy(cpu_offload=True)``: parameter shards, gradients and
  AdamW state on the CPU, the shards pinned (``is_pinned()``, on a GPU).
- ``fsdp1-sharded-ckpt``: a synchronous sharded save loads back into FSDP, into one process
  without FSDP, and ``distengine.checkpoint.consolidate`` writes a file: each ``torch.equal``
  to the live model's full state.
- ``fsdp1-async-ckpt``: a ~1B-parameter model (tiny on the dry run; SGD, so the checkpoint is
  the 4 GiB of weights), two synchronous ``trainer.save_checkpoint`` then three async sharded
  saves of ``ModelCheckpoint``: the second and third block training <= 10% of the faster
  synchronous save.
- ``fsdp1-predict-memory``: ``trainer.predict`` (``return_predictions=False``) over 4 and over 32
  batches (a fresh module each, sharded inside the measure; a 1-batch predict first warms up):
  the same peak memory (within 1 MiB or 1%).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks._work import lm_loss

Result = tuple[bool | None, str, dict]
BF16_LOSS_TOL = 2e-2
TARGET_TOKENS = 0.95
TARGET_MEM = 1.05
TARGET_ACT_CKPT_MEM = 0.70
TARGET_ASYNC = 0.10
REFUSAL = "needs 2 or more processes"
NOT_JUDGED = " [dry run: speed, peak memory and host syncs not judged]"

CHECK_NAMES = ("fsdp1-bf16", "fsdp1-target-dtype", "fsdp1-16-mixed-inf", "fsdp1-clip", "fsdp1-accumulate",
               "fsdp1-act-ckpt", "fsdp1-meta-init", "fsdp1-cpu-offload", "fsdp1-sharded-ckpt",
               "fsdp1-async-ckpt", "fsdp1-predict-memory")


# --------------------------------------------------------------------------- plumbing
def one_process(fn: Callable[..., Result]) -> Callable[..., Result]:
    """Run a check with no process group up at its start (so its first Trainer sets one up
    itself), SKIP while the Trainer refuses one rank, and remove a group a Trainer left."""

    @functools.wraps(fn)
    def run(s: Any) -> Result:
        if dist.is_initialized():
            dist.destroy_process_group()
        try:
            ok, msg, data = fn(s)
        except RuntimeError as exc:
            if REFUSAL not in str(exc):
                raise
            return None, f"the Trainer refuses FSDP in one process in this tree ({str(exc)[:90]}...)", {}
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
            if s.device.type == "cuda":
                torch.cuda.empty_cache()
        return ok, msg, data

    return run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def loop_mesh(device: torch.device) -> Iterator[Any]:
    """The hand-written loop's mesh of 1: on the process group a Trainer left up, else on a
    world-1 group of its own, removed afterwards (the next Trainer then makes its own)."""
    from torch.distributed.device_mesh import init_device_mesh

    own = not dist.is_initialized()
    if own:
        kw: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1, **kw)
    try:
        yield init_device_mesh(device.type, (1,))
    finally:
        if own and dist.is_initialized():
            dist.destroy_process_group()


def sized(s: Any, lm: dict[str, int] | None = None, batch: int | None = None, steps: int | None = None,
          warm: int | None = None) -> Any:
    out = copy.copy(s)
    out.lm = dict(lm or s.lm)
    out.batch, out.steps, out.warm = batch or s.batch, steps or s.steps, warm if warm is not None else s.warm
    return out


def small(s: Any, steps: int = 8) -> Any:
    """A small LM for the checks of correctness (not speed): quick on any device."""
    if s.dry_run:
        return sized(s, steps=steps, warm=1)
    return sized(s, {"vocab": 2048, "seq_len": 128, "d_model": 256, "layers": 2, "heads": 4}, batch=16,
                 steps=steps, warm=1)


def block_policy() -> set[type]:
    return {nn.TransformerEncoderLayer}


def strategy(**kw: Any) -> Any:
    from distengine.strategies.fsdp import FSDPStrategy

    kw.setdefault("auto_wrap_policy", block_policy())
    return FSDPStrategy(**kw)


def fit(s: Any, precision: str, losses: list, fused: bool = False, bad_at: int | None = None,
        bad: float = math.nan, data: Any = None, **flags: Any) -> tuple[Any, Any]:
    """The precision checks' LM fit (``gpu_check.engine_fit``) under FSDP; (clock, trainer)."""
    from benchmarks.gpu_check import engine_fit

    flags.setdefault("strategy", strategy())
    return engine_fit("distengine", s, precision, s.data() if data is None else data, losses, fused=fused,
                      bad_at=bad_at, bad=bad, **flags)


def syncs_per_step(s: Any, run: Callable[[int], Any], short: int = 10, long: int = 30) -> float:
    """``gpu_check.syncs_per_step``, but a run that raised is an error, not a count."""
    from benchmarks.gpu_check import count_syncs

    counts = []
    for n in (short, long):
        count, result = count_syncs(lambda n=n: run(n))
        if isinstance(result, BaseException):
            raise RuntimeError(f"the {n}-step run for the sync count failed: {result!r}") from result
        counts.append(count)
    return (counts[1] - counts[0]) / (long - short)


def group_note() -> str:
    if not dist.is_initialized():
        return "no process group left up after fit"
    return f"process group from the Trainer: {dist.get_backend()}, world {dist.get_world_size()}"


def mp_policy(precision: str) -> Any:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()


def loop_run(s: Any, precision: str, data: Any, losses: list, clip: float | None = None,
             act_ckpt: bool = False, norms: list | None = None) -> tuple[Any, nn.Module]:
    """The hand-written FSDP2 loop on a mesh of 1: ``fully_shard`` on every block, then on the
    root, AdamW, GradScaler for 16-mixed; (its steady-state clock, the trained model)."""
    from torch.distributed.fsdp import fully_shard

    from benchmarks._fsdp_plain import act_ckpt_blocks
    from benchmarks.gpu_check import StepClock

    clock = StepClock(s)
    with loop_mesh(s.device) as mesh:
        model = s.model().to(s.device).train()
        if act_ckpt:
            act_ckpt_blocks(model)
        for block in model.blocks.layers:
            fully_shard(block, mesh=mesh, mp_policy=mp_policy(precision))
        fully_shard(model, mesh=mesh, mp_policy=mp_policy(precision))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler(s.device.type) if precision == "16-mixed" else None
        for i, (x, y) in enumerate(DataLoader(data, batch_size=s.batch, shuffle=False)):
            clock.batch_start(i)
            x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
            loss = lm_loss(model(x), y)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if clip:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                if norms is not None:
                    norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        clock.done()
    return clock, model


def rel_diff(a: list, b: list) -> float:
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) != len(b) or not a:
        return math.inf
    return sum(abs(x - y) / max(abs(x), 1e-8) for x, y in zip(a, b)) / len(a)


def peak(s: Any, run: Callable[[], Any]) -> tuple[Any, int | None]:
    """(run's result, peak ``max_memory_allocated`` above what was allocated before; None on CPU)."""
    import gc

    gc.collect()
    if s.device.type != "cuda":
        return run(), None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = run()
    return out, torch.cuda.max_memory_allocated() - base


def whole(t: torch.Tensor) -> torch.Tensor:
    """The complete tensor behind ``t``: on a mesh of 1 a DTensor's local shard is all of it (read
    without a collective: the stage's 1-rank group may be gone after ``fit``), else gathered."""
    if hasattr(t, "to_local"):
        return t.to_local() if t.device_mesh.size() == 1 else t.full_tensor()
    return t


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Complete CPU tensors of a module's state."""
    return {k: whole(v).detach().cpu().clone() for k, v in module.state_dict().items()}


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[bool, str]:
    if set(a) != set(b):
        return False, f"keys differ: {sorted(set(a) ^ set(b))[:4]}"
    bad = [k for k in a if not torch.equal(a[k].cpu(), b[k].cpu())]
    return not bad, (f"{len(bad)} of {len(a)} tensors differ ({bad[:3]})" if bad else f"{len(a)} tensors equal")


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


# --------------------------------------------------------------------------- bf16 against the loop
@one_process
def check_bf16(s: Any) -> Result:
    base = s.for_precision("bf16-mixed")
    w = sized(base, steps=8, warm=2) if s.dry_run else sized(base, steps=60, warm=15)
    rounds = 1 if s.dry_run else 2
    data = w.data()
    runners = {"loop": lambda got: loop_run(w, "bf16-mixed", data, got)[0],
               "trainer": lambda got: fit(w, "bf16-mixed", got, data=data)[0]}
    times: dict[str, list[float]] = {n: [] for n in runners}
    mem: dict[str, list[int]] = {n: [] for n in runners}
    losses: dict[str, list[float]] = {}
    note = ""
    for r in range(-1, rounds):  # round -1 warms up kernels and the process group
        order = list(runners) if r % 2 else list(reversed(runners))
        for name in order:
            got: list = []
            clock, nbytes = peak(w, functools.partial(runners[name], got))
            if name == "trainer" and not note:
                note = group_note()
            if r < 0:
                continue
            times[name].append(clock.seconds)
            if nbytes is not None:
                mem[name].append(nbytes)
            losses.setdefault(name, [float(v) for v in got])
    rel = rel_diff(losses["loop"], losses["trainer"])
    ratios = [lt / tt for lt, tt in zip(times["loop"], times["trainer"])]
    thr = statistics.median(ratios)
    tokens = w.batch * (w.steps - w.warm) * w.lm["seq_len"]
    data_out: dict[str, Any] = {"batch": w.batch, "steps": w.steps, "loss_mean_rel_diff": rel,
                                "tokens_per_s_ratio": thr, "tokens_per_s_ratio_all": ratios,
                                "tokens_per_s_loop": tokens / min(times["loop"]), "seconds": times,
                                "losses": losses, "group": note}
    mratio = None
    if mem["loop"]:
        mratio = max(t / max(lp, 1) for t, lp in zip(mem["trainer"], mem["loop"]))
        data_out.update(memory_ratio=mratio, peak_mb={n: max(v) / 2**20 for n, v in mem.items()})
    syncs = None
    if s.device.type == "cuda":
        sync_data = w.data(30)

        def run(n: int) -> Any:
            return fit(w, "bf16-mixed", [], data=sync_data, limit_train_batches=n, log_every_n_steps=1000)
        syncs = syncs_per_step(w, run)
        data_out["syncs_per_step"] = syncs
    ok = rel <= BF16_LOSS_TOL and all(math.isfinite(v) for v in losses["trainer"])
    if not s.dry_run:
        ok = ok and thr >= TARGET_TOKENS and mratio is not None and mratio <= TARGET_MEM and syncs == 0
    msg = (f"batch {w.batch}, {w.steps} steps ({w.steps - w.warm} timed), {rounds} round(s): loss diff {rel:.1e} "
           f"(<= {BF16_LOSS_TOL:g}), tokens/s x{thr:.3f} (>= {TARGET_TOKENS}), peak mem "
           f"{'n/a' if mratio is None else f'x{mratio:.3f}'} (<= {TARGET_MEM}; "
           f"{mib(max(mem['trainer'], default=None))}),"
           f" syncs/step {'n/a' if syncs is None else f'{syncs:g}'} (0); {note}")
    return ok, msg + (NOT_JUDGED if s.dry_run else ""), data_out


# --------------------------------------------------------------------------- float targets
@one_process
def check_target_dtype(s: Any) -> Result:
    import distengine as de

    seen: list[tuple[torch.dtype, torch.dtype, torch.dtype]] = []

    class Regression(de.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            out = self.net(x).squeeze(-1)
            seen.append((x.dtype, y.dtype, out.dtype))
            return nn.functional.mse_loss(out.float(), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=gen)
    data = TensorDataset(x, x.sum(dim=1))  # float32 targets
    trainer = de.Trainer(**_flags(s), strategy=strategy(auto_wrap_policy=None), precision="bf16-mixed")
    trainer.fit(Regression(), DataLoader(data, batch_size=16))
    kinds = sorted({tuple(str(t).replace("torch.", "") for t in k) for k in seen})
    ok = bool(seen) and all(y == torch.float32 and out == torch.bfloat16 for _, y, out in seen)
    return ok, (f"{len(seen)} steps, (input, target, forward output) dtypes seen in training_step: {kinds} "
                f"(want target float32, output bfloat16); {group_note()}"), {"dtypes": kinds}


def _flags(s: Any, **kw: Any) -> dict[str, Any]:
    flags = {"max_epochs": 1, "accelerator": s.accelerator, "devices": 1, "logger": False,
             "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
             "num_sanity_val_steps": 0, "default_root_dir": tempfile.mkdtemp(prefix="gpucheck-fsdp1-")}
    flags.update(kw)
    return flags


# --------------------------------------------------------------------------- fp16 with an inf
@one_process
def check_fp16_inf(s: Any) -> Result:
    w = small(s, steps=12)
    data = w.data(30)
    skipped = []
    for bad_at in (None, 3):
        _, trainer = fit(w, "16-mixed", [], data=data, bad_at=bad_at, bad=math.inf, limit_train_batches=12)
        skipped.append(trainer.precision_plugin.skipped_steps)
    out: dict[str, Any] = {"skipped_steps": skipped}
    ok = skipped[1] - skipped[0] == 1  # as the sync-free check: the initial loss scale may overflow too
    per_step: dict[str, float] = {}
    if s.device.type == "cuda":
        for name, fused in (("AdamW", False), ("fused AdamW", True)):
            per_step[name] = syncs_per_step(w, lambda n, f=fused: fit(
                w, "16-mixed", [], fused=f, data=data, limit_train_batches=n, log_every_n_steps=1000))
        out["syncs_per_step"] = per_step
        ok = ok and per_step["AdamW"] == 1 and per_step["fused AdamW"] == 0
    syncs = ", ".join(f"{k} {v:g}" for k, v in per_step.items()) or "n/a"
    msg = (f"GradScaler skipped steps: {skipped[0]} clean, {skipped[1]} with an inf loss at step 3 (want one more); "
           f"syncs/step: {syncs} (want AdamW 1, fused AdamW 0)")
    return ok, msg + (NOT_JUDGED if s.dry_run else ""), out


# --------------------------------------------------------------------------- clipping
@one_process
def check_clip(s: Any) -> Result:
    w = small(s, steps=6)
    data = w.data()
    clip = 0.05  # below the LM's gradient norm: every step clips
    loop_norms: list = []
    _, loop_model = loop_run(w, "32-true", data, [], clip=clip, norms=loop_norms)
    loop_state = full_state(loop_model)
    del loop_model
    trainer_norms: list = []
    from distengine.callbacks import Callback

    class Record(Callback):
        def on_fit_start(self, trainer, module):
            st = trainer.strategy
            original = st.clip_gradients

            def clip_and_record(*args: Any, **kw: Any) -> Any:
                norm = original(*args, **kw)
                trainer_norms.append(norm.detach().clone())
                return norm
            st.clip_gradients = clip_and_record

    # (these callbacks replace the step clock's: nothing is timed here)
    _, trainer = fit(w, "32-true", [], data=data, gradient_clip_val=clip, callbacks=[Record()])
    live = full_state(trainer.lightning_module.gpt)
    tn = [float(n) for n in trainer_norms]
    ln = [float(n) for n in loop_norms]
    norm_diff = max((abs(a - b) / max(abs(b), 1e-12) for a, b in zip(tn, ln)), default=math.inf)
    wdiff = max((live[k] - loop_state[k]).abs().max().item() for k in loop_state)
    # 1e-4, not 0: attention's backward kernels on a GPU need not be bitwise deterministic
    ok = len(tn) == len(ln) == w.steps and norm_diff <= 1e-4 and wdiff <= 1e-4 and all(n > clip for n in ln)
    msg = (f"clip {clip}: {len(tn)} norms from the strategy vs the loop's clip_grad_norm_ (first {tn[0]:.4g} vs "
           f"{ln[0]:.4g}), max rel. diff {norm_diff:.1e} (<= 1e-4); max |w_trainer - w_loop| {wdiff:.1e} (<= 1e-4)"
           if tn and ln else f"no norms recorded (trainer {len(tn)}, loop {len(ln)})")
    return ok, msg, {"trainer_norms": tn, "loop_norms": ln, "norm_rel_diff": norm_diff, "weight_diff": wdiff}



# --------------------------------------------------------------------------- accumulation
@contextlib.contextmanager
def count_reductions() -> Iterator[dict[str, int]]:
    """Count FSDP2's gradient reductions: calls of its ``foreach_reduce`` (one per shard unit
    each time it reduces; on one rank it copies instead of calling the collective) and calls of
    the reduce-scatter collectives themselves."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group as group_mod

    counts = {"foreach_reduce": 0, "reduce_scatter": 0}
    patched: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, key: str) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return

        @functools.wraps(original)
        def counted(*args: Any, **kw: Any) -> Any:
            counts[key] += 1
            return original(*args, **kw)
        setattr(owner, name, counted)
        patched.append((owner, name, original))

    if not callable(getattr(group_mod, "foreach_reduce", None)):
        raise RuntimeError(f"torch {torch.__version__} has no {group_mod.__name__}.foreach_reduce to count")
    wrap(group_mod, "foreach_reduce", "foreach_reduce")
    for name in ("reduce_scatter_tensor", "reduce_scatter_single"):
        wrap(dist, name, "reduce_scatter")
    try:
        yield counts
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)


@one_process
def check_accumulate(s: Any) -> Result:
    w = small(s, steps=16)
    data = w.data()
    units = w.lm["layers"] + 1  # each block, then the root
    got = {}
    for accum in (1, 4):
        with count_reductions() as counts:
            _, trainer = fit(w, "bf16-mixed", [], data=data, accumulate_grad_batches=accum)
        got[accum] = dict(counts, steps=trainer.global_step)
    ok = True
    parts = []
    for accum, c in got.items():
        windows = w.steps // accum
        ok = ok and c["steps"] == windows and c["foreach_reduce"] == units * windows \
            and c["reduce_scatter"] in (0, units * windows)
        parts.append(f"accumulate_grad_batches={accum}: {c['steps']} optimizer steps, {c['foreach_reduce']} "
                     f"reductions (want {units} units x {windows} windows), {c['reduce_scatter']} reduce-scatter "
                     "collective calls")
    return ok, "; ".join(parts) + " (one rank: FSDP2 copies instead of calling the collective)", \
        {"counts": got, "units": units}


# --------------------------------------------------------------------------- activation checkpointing
@one_process
def check_act_ckpt(s: Any) -> Result:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    base = s.for_precision("bf16-mixed")
    # on the GPU a vocabulary of 2048: the head's logits (not checkpointed) would otherwise be a
    # third of the peak, and the check is about the blocks' activations
    w = sized(base, steps=4, warm=1) if s.dry_run else sized(base, dict(s.lm, vocab=2048), steps=8, warm=1)
    data = w.data()
    out: dict[str, Any] = {}
    for act in (False, True):
        got: list = []
        kw = {"activation_checkpointing_policy": block_policy()} if act else {}
        (_, trainer), nbytes = peak(w, functools.partial(fit, w, "bf16-mixed", got, data=data,
                                                          strategy=strategy(**kw)))
        wrapped = sum(isinstance(m, CheckpointWrapper) for m in trainer.lightning_module.modules())
        out["with" if act else "without"] = {"peak": nbytes, "losses": [float(v) for v in got], "wrapped": wrapped}
    a, b = out["with"], out["without"]
    rel = rel_diff(b["losses"], a["losses"])
    ratio = a["peak"] / b["peak"] if a["peak"] and b["peak"] else None
    ok = rel <= BF16_LOSS_TOL and a["wrapped"] == w.lm["layers"] and b["wrapped"] == 0
    if not s.dry_run:
        ok = ok and ratio is not None and ratio <= TARGET_ACT_CKPT_MEM
    msg = (f"batch {w.batch}: peak memory with/without {f'x{ratio:.3f}' if ratio else 'n/a'} "
           f"(<= {TARGET_ACT_CKPT_MEM}; {mib(a['peak'])} vs {mib(b['peak'])}), {a['wrapped']} blocks wrapped "
           f"(want {w.lm['layers']}), loss diff {rel:.1e}")
    return ok, msg + (NOT_JUDGED if s.dry_run else ""), {**out, "memory_ratio": ratio, "loss_mean_rel_diff": rel}


# --------------------------------------------------------------------------- meta init
ROPE_BASE = 10000.0


def rope_inv_freq(dim: int, device: Any = None) -> torch.Tensor:
    return 1.0 / (ROPE_BASE ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))


class Rotary(nn.Module):
    """RoPE: a buffer computed from the shape, not a parameter, re-made by ``reset_parameters``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("inv_freq", rope_inv_freq(dim), persistent=False)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.inv_freq.copy_(rope_inv_freq(self.dim, self.inv_freq.device))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        angles = torch.arange(h.shape[1], device=h.device, dtype=torch.float32)[:, None] * self.inv_freq
        cos, sin = angles.cos().to(h.dtype), angles.sin().to(h.dtype)
        a, b = h[..., 0::2], h[..., 1::2]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


class RopeLM(nn.Module):
    def __init__(self, vocab: int, d_model: int, layers: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.rope = Rotary(d_model)
        self.layers = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(layers))
        self.head = nn.Linear(d_model, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.rope(self.tok(x))
        for layer in self.layers:
            h = h + torch.relu(layer(h))
        return self.head(h)


@one_process
def check_meta_init(s: Any) -> Result:
    from torch.distributed.fsdp import fully_shard

    import distengine as de

    w = small(s, steps=4)
    vocab, d, n = w.lm["vocab"], w.lm["d_model"], w.lm["layers"]
    seen: dict[str, Any] = {}

    class MetaLM(de.Module):
        def configure_model(self):
            if hasattr(self, "net"):
                return
            with torch.device("meta"):
                self.net = RopeLM(vocab, d, n)
            seen["built_on_meta"] = self.net.rope.inv_freq.is_meta and self.net.head.weight.is_meta
            for layer in self.net.layers:
                fully_shard(layer, mesh=self.trainer.strategy.mesh)

        def on_fit_start(self):  # after the strategy's init, before any step
            seen["inv_freq"] = self.net.rope.inv_freq.detach().clone()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return lm_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    module = MetaLM()
    trainer = de.Trainer(**_flags(s), strategy=strategy(auto_wrap_policy=None), precision="32-true")
    trainer.fit(module, DataLoader(w.data(), batch_size=w.batch))
    got = seen.get("inv_freq")
    want = rope_inv_freq(d, got.device) if got is not None else None
    equal = got is not None and torch.equal(got, want)
    after = module.net.rope.inv_freq
    still = torch.equal(after, rope_inv_freq(d, after.device))
    finite = all(torch.isfinite(whole(p)).all() for p in module.parameters())
    ok = bool(seen.get("built_on_meta")) and equal and still and finite and trainer.global_step == w.steps
    diff = (got - want).abs().max().item() if got is not None else math.nan
    return ok, (f"built on meta: {seen.get('built_on_meta')}; RoPE inv_freq ({d // 2} values) after the strategy's "
                f"init on {after.device.type}: torch.equal to 1/10000^(2i/d) {equal} (max diff {diff:.1e}), after "
                f"training {still}; parameters finite {finite}; {trainer.global_step} steps"), \
        {"max_diff": diff, "equal": equal}


# --------------------------------------------------------------------------- cpu offload
@one_process
def check_cpu_offload(s: Any) -> Result:
    w = small(s, steps=4)
    losses: list = []
    _, trainer = fit(w, "bf16-mixed", losses, strategy=strategy(cpu_offload=True))
    module = trainer.lightning_module
    params = list(module.parameters())
    local = [p.to_local() if hasattr(p, "to_local") else p for p in params]
    devices = sorted({t.device.type for t in local})
    opt_devices = sorted({v.device.type for st in trainer.optimizers[0].state.values() for k, v in st.items()
                          if isinstance(v, torch.Tensor) and k != "step"})
    pinned = sum(bool(t.is_pinned()) for t in local) if s.device.type == "cuda" else None
    ok = devices == ["cpu"] and opt_devices == ["cpu"] and all(math.isfinite(float(v)) for v in losses)
    if s.device.type == "cuda":
        ok = ok and pinned == len(local)
    msg = (f"{len(local)} parameter shards on {devices}, AdamW state on {opt_devices} (want cpu); pinned: "
           + (f"{pinned} of {len(local)}" if pinned is not None else "not checked on the CPU (pinning needs a GPU)")
           + f"; {len(losses)} steps, last loss {float(losses[-1]):.3f}")
    return ok, msg, {"devices": devices, "optimizer_devices": opt_devices, "pinned": pinned}


# --------------------------------------------------------------------------- sharded checkpoints
@one_process
def check_sharded_ckpt(s: Any) -> Result:
    import distengine as de
    from benchmarks.gpu_check import lm_module
    from distengine.checkpoint.io import safe_load
    from distengine.checkpoint.sharded import consolidate

    w = small(s, steps=4)
    data = w.data()
    root = tempfile.mkdtemp(prefix="gpucheck-fsdp1-ckpt-")
    path, flat = os.path.join(root, "fsdp.ckpt"), os.path.join(root, "consolidated.ckpt")
    try:
        from distengine.callbacks import Callback

        live: dict[str, torch.Tensor] = {}

        class SaveAtEnd(Callback):
            """The Trainer's synchronous save at the end of training, inside the stage (where
            ModelCheckpoint saves), and the live weights it must hold."""

            def on_train_end(self, trainer, module):
                trainer.save_checkpoint(path)
                live.update(full_state(module))

        fit(w, "32-true", [], data=data, callbacks=[SaveAtEnd()])
        layout = sorted(os.listdir(path)) if os.path.isdir(path) else ["(a file)"]
        results = {}
        for name, strat in (("FSDP", strategy()), ("one process, no FSDP", "auto")):
            module = lm_module(de.Module, w, [])
            t = de.Trainer(**_flags(s, max_steps=w.steps), strategy=strat)
            t.fit(module, DataLoader(data, batch_size=w.batch), ckpt_path=path)  # at max_steps: loads, trains none
            results[name] = (t.global_step,) + states_equal(live, full_state(module))
        consolidate(path, flat)
        cons = {k: v for k, v in safe_load(flat)["state_dict"].items()}
        results["consolidate"] = (None,) + states_equal(live, cons)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ok = all(r[1] for r in results.values()) and all(r[0] in (None, w.steps) for r in results.values())
    parts = [f"{n}: {r[2]}" + (f" (step {r[0]})" if r[0] is not None else "") for n, r in results.items()]
    return ok, f"sync sharded save ({', '.join(layout)}) of {len(live)} tensors -> " + "; ".join(parts), \
        {"layout": layout, "results": {n: list(r) for n, r in results.items()}}


# --------------------------------------------------------------------------- async sharded saves
@one_process
def check_async_ckpt(s: Any) -> Result:
    import distengine as de
    from distengine.callbacks import Callback, ModelCheckpoint

    width, layers = (256, 4) if s.dry_run else (8192, 15)  # 15 * 8192^2 = 1.007e9 parameters
    root = tempfile.mkdtemp(prefix="gpucheck-fsdp1-async-")
    sync_s: list[float] = []
    blocked: list[float] = []

    class Big(de.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            with s.device:  # built where it trains: a CPU init of 1B parameters takes seconds
                self.net = nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(layers)])

        def training_step(self, batch, batch_idx):
            return self.net(batch[0]).float().pow(2).mean()

        def configure_optimizers(self):  # no optimizer state: the checkpoint is the weights (4 GiB)
            return torch.optim.SGD(self.parameters(), lr=1e-6)

    class SyncFirst(Callback):
        """Steps 0 and 1: the Trainer's synchronous save of the same state, timed, then deleted
        (the faster one counts: the first also plans and creates what later saves reuse)."""

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx < 2:
                s.sync()
                t0 = time.perf_counter()
                trainer.save_checkpoint(os.path.join(root, "sync.ckpt"))
                sync_s.append(time.perf_counter() - t0)
                shutil.rmtree(os.path.join(root, "sync.ckpt"), ignore_errors=True)

    class TimedAsync(ModelCheckpoint):
        """Steps 2-4: async saves, each timed alone (the previous write waited for first)."""

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx < 2:
                return
            self.wait()
            s.sync()
            t0 = time.perf_counter()
            super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
            blocked.append(time.perf_counter() - t0)

    ckpt = TimedAsync(dirpath=os.path.join(root, "async"), every_n_train_steps=1, save_top_k=1, async_save=True)
    data = TensorDataset(torch.randn(5 * 4, width))
    trainer = de.Trainer(**_flags(s, max_steps=5, enable_checkpointing=True),
                         strategy=strategy(auto_wrap_policy={nn.Linear}), callbacks=[SyncFirst(), ckpt])
    try:
        params = sum(p.numel() for p in Big().parameters()) if s.dry_run else width * width * layers
        trainer.fit(Big(), DataLoader(data, batch_size=4))
        kept = sorted(os.listdir(os.path.join(root, "async")))
        complete = [k for k in kept if os.path.exists(os.path.join(root, "async", k, ".metadata"))]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    sync = min(sync_s) if sync_s else math.nan
    ratios = [b / sync for b in blocked]
    ok = len(blocked) == 3 and bool(complete)
    if not s.dry_run:
        ok = ok and all(r <= TARGET_ASYNC for r in ratios[1:])
    msg = (f"{params / 1e9:.2f}B parameters ({params * 4 / 2**30:.1f} GiB): sync sharded save "
           f"{sync:.2f} s ({', '.join(f'{v:.2f}' for v in sync_s)}); async saves block "
           + ", ".join(f"{b:.3f} s (x{r:.3f})" for b, r in zip(blocked, ratios))
           + f" (2nd and 3rd <= {TARGET_ASYNC}); complete checkpoint kept: {complete[-1:] or 'none'}")
    return ok, msg + (" [dry run: ratios not judged]" if s.dry_run else ""), \
        {"sync_s": sync_s, "blocked_s": blocked, "ratios": ratios, "kept": kept}


# --------------------------------------------------------------------------- predict memory
@one_process
def check_predict_memory(s: Any) -> Result:
    import distengine as de
    from benchmarks.gpu_check import lm_module

    w = small(s) if s.dry_run else sized(s, batch=32)
    calls: list[int] = []

    class Predict(type(lm_module(de.Module, w, []))):  # the LM with a predict_step
        def predict_step(self, batch, batch_idx):
            calls.append(batch_idx)
            return self.gpt(batch[0]).argmax(-1)

    peaks = {}
    for n in (1, 4, 32):  # each a fresh module, sharded and moved to the device inside the measure
        data = TensorDataset(w.data(n)[:][0])
        trainer = de.Trainer(**_flags(s), strategy=strategy(), precision="bf16-mixed")
        _, peaks[n] = peak(w, functools.partial(trainer.predict, Predict(), DataLoader(data, batch_size=w.batch),
                                                return_predictions=False))
    ok = calls.count(31) == 1 and len(calls) == 37
    growth = None
    if peaks[4] is not None:
        growth = peaks[32] - peaks[4]
        ok = ok and growth <= max(2**20, 0.01 * peaks[4])
    msg = (f"{len(calls)} predict batches (want 1 + 4 + 32); peak memory over 4 batches {mib(peaks[4])}, over 32 "
           f"{mib(peaks[32])}, growth {mib(growth)} (<= max(1 MiB, 1%)); return_predictions=False")
    return ok, msg + (NOT_JUDGED if s.dry_run else ""), {"peaks": peaks, "calls": len(calls)}


CHECKS: dict[str, Callable[[Any], Result]] = {
    "fsdp1-bf16": check_bf16, "fsdp1-target-dtype": check_target_dtype, "fsdp1-16-mixed-inf": check_fp16_inf,
    "fsdp1-clip": check_clip, "fsdp1-accumulate": check_accumulate, "fsdp1-act-ckpt": check_act_ckpt,
    "fsdp1-meta-init": check_meta_init, "fsdp1-cpu-offload": check_cpu_offload,
    "fsdp1-sharded-ckpt": check_sharded_ckpt, "fsdp1-async-ckpt": check_async_ckpt,
    "fsdp1-predict-memory": check_predict_memory,
}
assert tuple(CHECKS) == CHECK_NAMES
