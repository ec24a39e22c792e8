"""Several optimizers in automatic optimization, the Lightning 1.x way (the GAN pattern).
When ``training_step`` takes an ``optimizer_idx`` argument, :class:`OneXOptimization` runs
each batch as pytorch-lightning 1.9.5 does::

    for each active optimizer i (all of them; or, with {"optimizer": o, "frequency": n}
                                 dicts, the one whose turn it is at this batch_idx):
        freeze the parameters of every other optimizer (toggle_optimizer)
        out = training_step(batch, batch_idx, optimizer_idx=i)  (DDP no_sync unless stepping)
        backward(loss / accumulate_grad_batches)
        on the last micro-batch: clip -> optimizer i step -> zero_grad; global_step += 1
        restore requires_grad (untoggle_optimizer)
    on the last micro-batch: the step-interval schedulers (every `frequency` batches)

``global_step`` counts optimizer steps, as in 1.9.5: +N per batch with N optimizers, +1 per
batch with frequencies, once per accumulation window and optimizer; a step whose
``training_step`` returned None still counts (1.9.5 calls ``optimizer.step`` anyway, with no
gradients). ``on_train_batch_end`` and ``training_epoch_end`` get, per batch, the list of the
outputs of the optimizers that ran. Under DDP this mode needs ``find_unused_parameters=True``
(1.9.5's default), which is then set (:func:`one_x_mode`, known before the optimizers exist):
the frozen parameters receive no gradient.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch

from distengine.loop_context import EpochParts, LoopContext
from distengine.nonfinite import _check_nonfinite
from distengine.optimization import steps
from distengine.utilities.signatures import signature_params


def _params(fn: Any) -> list[inspect.Parameter]:
    return signature_params(fn) or []


def takes_optimizer_idx(step: Any) -> bool:
    return any(p.name == "optimizer_idx" for p in _params(step))


def optimizer_frequencies(returned: Any, n: int) -> list[int]:
    """The ``frequency`` of each optimizer in the raw ``configure_optimizers`` value (1.x)."""
    items = [returned] if isinstance(returned, dict) else list(returned) if isinstance(returned, (list, tuple)) else []
    freqs = [item["frequency"] for item in items if isinstance(item, dict) and item.get("frequency") is not None]
    if freqs and len(freqs) != n:
        raise ValueError("configure_optimizers gave a 'frequency' to some optimizers only; give one to each")
    if any(not isinstance(f, int) or f < 1 for f in freqs):
        raise ValueError(f"optimizer frequencies must be positive integers, got {freqs}")
    return freqs


def one_x_mode(module: Any) -> bool:
    """True when ``fit`` will run :class:`OneXOptimization` (known before the optimizers exist,
    so that DDP is built with ``find_unused_parameters``): automatic optimization with a
    ``training_step`` that takes ``optimizer_idx``."""
    return bool(module.automatic_optimization) and takes_optimizer_idx(module.training_step)


class OneXOptimization:
    """Automatic optimization over several optimizers, as pytorch-lightning 1.9.5 runs it."""

    def __init__(self, module: Any, optimizers: list[Any], schedulers: list[Any], frequencies: list[int],
                 precision: str, accumulate_grad_batches: int) -> None:
        n = len(optimizers)
        self.toggle = n > 1  # 1.9.5 toggles only with several optimizers
        self.every = range(n)
        self.pass_idx = n > 1 or _required(module.training_step, "optimizer_idx")
        self.cycle = [i for i, f in enumerate(frequencies) for _ in range(f)] if n > 1 else []
        self._check(schedulers, frequencies, precision, accumulate_grad_batches)
        owner = {id(o): i for i, o in enumerate(optimizers)}
        self.step_schedulers = [(owner.get(id(getattr(c.scheduler, "optimizer", None))), c)
                                for c in schedulers if c.interval == "step"]

    @staticmethod
    def _check(schedulers: list[Any], frequencies: list[int], precision: str, accumulate_grad_batches: int) -> None:
        """Refuse, in one line each, the combinations whose 1.9.5 behaviour is not reproduced."""
        what = "training_step(batch, batch_idx, optimizer_idx) with several optimizers"
        if precision == "16-mixed":
            raise ValueError(f"{what} is not supported with precision='16-mixed'; use 'bf16-mixed' or 32")
        if frequencies and accumulate_grad_batches > 1:
            raise ValueError(f"optimizer frequencies with accumulate_grad_batches > 1 are not supported ({what})")
        if frequencies and schedulers:
            raise ValueError(f"learning-rate schedulers with optimizer frequencies are not supported ({what})")
        if any(c.interval == "step" and c.reduce_on_plateau for c in schedulers):
            raise ValueError(f"a step-interval ReduceLROnPlateau is not supported with {what}")

    def active(self, batch_idx: int) -> range | list[int]:
        """1.9.5's ``_get_active_optimizers``: the frequency cycle restarts with each epoch's batch_idx."""
        return [self.cycle[batch_idx % len(self.cycle)]] if self.cycle else self.every

    def start_epoch(self, ctx: LoopContext, parts: EpochParts) -> None:
        """Nothing to prepare: each optimizer's call reads the strategy and precision itself."""

    def end_window(self, ctx: LoopContext) -> None:
        """Nothing: each active optimizer stepped (and was counted) inside :meth:`run_batch`."""

    def run_batch(self, ctx: LoopContext, args: tuple, batch_idx: int, last_micro: bool) -> tuple[list[Any], bool]:
        """Run ``training_step``, backward and (on the last micro-batch) the step of each active
        optimizer; return the outputs of those whose step returned a loss (a batch is never
        counted as skipped: 1.9.5 steps without a loss too)."""
        module, p = ctx.module, ctx.progress
        outputs: list[Any] = []
        for i in self.active(batch_idx):
            opt = ctx.optimizers[i]
            if self.toggle:
                module.toggle_optimizer(opt)
            try:
                out = self._closure(ctx, args, i, last_micro)
                if last_micro:  # 1.9.5 steps (and counts the step) even when the loss was None
                    steps.step_optimizer(ctx, opt)  # (zero_grad even when overridden: 1.9.5 calls it after each step)
                    p.global_step += 1
            finally:
                if self.toggle:
                    module.untoggle_optimizer(opt)
            if out is not None:
                outputs.append(out)
        if last_micro:
            for owner, cfg in self.step_schedulers:  # 1.9.5: counted in batches of the epoch
                if owner in self.active(batch_idx) and (batch_idx + 1) % cfg.frequency == 0:
                    cfg.scheduler.step()
        return outputs, False

    def _closure(self, ctx: LoopContext, args: tuple, i: int, last_micro: bool) -> Any:
        """training_step (+ training_step_end) and backward for optimizer ``i``; the detached
        output (``{"loss": ...}`` for a bare tensor), or None when no loss was returned."""
        prec, hooks, strategy, state = ctx.precision, ctx.hooks, ctx.strategy, ctx.state
        step_end = ctx.adapted.step_end
        accum = ctx.flags.accumulate_grad_batches
        kwargs = {"optimizer_idx": i} if self.pass_idx else {}
        with strategy.no_sync(strategy.model, last_micro):
            with prec.autocast() if prec.is_mixed else contextlib.nullcontext():
                out = strategy.step_fn(*args, **kwargs)
            loss = steps.extract_loss(ctx, out)
            if step_end is not None:
                out = step_end(out)
                loss = steps.extract_loss(ctx, out)
            if loss is None:
                return None
            if not state.loss_checked:
                steps.check_first_loss(ctx, loss)
            if ctx.flags.on_nonfinite_loss == "error":
                _check_nonfinite(ctx, loss)  # one host read per optimizer call
            state.last_loss = loss
            if accum > 1:
                loss = loss / accum
            for fn in hooks["on_before_backward"]:
                fn(loss)
            prec.backward(loss)
            for fn in hooks["on_after_backward"]:
                fn()
        if isinstance(out, torch.Tensor):
            return {"loss": out.detach()}
        return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items()}


def _required(fn: Any, name: str) -> bool:
    return any(p.name == name and p.default is inspect.Parameter.empty for p in _params(fn))
