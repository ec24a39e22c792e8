"""The Lightning 1.x optimization style and old hook names, adapted once before the fit loop.

Decided in ``Trainer._setup_fit``/``_build_hooks``, never per batch:

* **Several optimizers in automatic optimization** (the 1.x GAN pattern). When
  ``training_step`` takes an ``optimizer_idx`` argument, :class:`OneXOptimization` runs
  each batch as pytorch-lightning 1.9.5 does::

      for each active optimizer i (all of them; or, with {"optimizer": o, "frequency": n}
                                   dicts, the one whose turn it is at this batch_idx):
          freeze the parameters of every other optimizer (toggle_optimizer)
          out = training_step(batch, batch_idx, optimizer_idx=i)  (DDP no_sync unless stepping)
          backward(loss / accumulate_grad_batches)
          on the last micro-batch: clip -> optimizer i step -> zero_grad; global_step += 1
          restore requires_grad (untoggle_optimizer)
      on the last micro-batch: the step-interval schedulers (every `frequency` batches)

  ``global_step`` counts optimizer steps, as in 1.9.5: +N per batch with N optimizers,
  +1 per batch with frequencies, once per accumulation window and optimizer; a step whose
  ``training_step`` returned None still counts (1.9.5 calls ``optimizer.step`` anyway, with
  no gradients). ``on_train_batch_end`` and ``training_epoch_end`` get, per batch, the list
  of the outputs of the optimizers that ran. Under DDP this mode needs
  ``find_unused_parameters=True`` (1.9.5's default), which is then set: the frozen
  parameters receive no gradient. Several optimizers without ``optimizer_idx`` are refused
  with Lightning 2.x's advice (manual optimization).
* **training_step_end / training_end(outputs)**: called on each step's output; returning
  None keeps the step's output, as 1.9.5 does for ``training_step_end``.
* **training_end(self)** with no argument (the tutorials' "code executed when training
  ends"): called once, after the last training step, before ``on_train_end``.
* ``training_step`` / ``*_epoch_end`` returning ``{"log": {...}, "progress_bar": {...}}``.
* ``Trainer(checkpoint_callback=ModelCheckpoint(...))`` (Lightning 1.0-1.2; a bool later).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

from distengine.module import module_overrides

# 1.x hook names, called after the 2.x hook they became
HOOK_ALIASES = {"on_train_epoch_start": "on_epoch_start", "on_train_epoch_end": "on_epoch_end",
                "on_train_batch_start": "on_batch_start", "on_train_batch_end": "on_batch_end"}


@dataclass(frozen=True)
class Adapted:
    """What a module's 1.x style changes in the loop, decided once before it starts."""
    step_end: Callable[[Any], Any] | None        # training_step_end / training_end(outputs)
    training_end: Callable[[], Any] | None       # the argument-less 0.x training_end()
    collect_train_outputs: bool                  # training_epoch_end(outputs) is overridden
    collect_eval_outputs: dict[str, bool]        # validation/test_epoch_end, validation_end


def adapt(module: Any) -> Adapted:
    """Turn ``module``'s 1.x hooks into the parts the 2.x loop calls (see the module docstring)."""
    cls = type(module)
    return Adapted(
        step_end=step_end_hook(module), training_end=training_end_hook(module),
        collect_train_outputs=hasattr(cls, "training_epoch_end") and module_overrides(module, "training_epoch_end"),
        collect_eval_outputs={"predict": True, "test": hasattr(cls, "test_epoch_end"),
                              "validate": hasattr(cls, "validation_epoch_end") or hasattr(cls, "validation_end")})


def hook_methods(module: Any, name: str) -> tuple:
    """The bound methods ``module`` overrides for hook ``name``: the 2.x one, then its 1.x alias."""
    alias = HOOK_ALIASES.get(name)  # (a wrapper around the default 1.x hook, which 2.x lacks, is no override)
    return tuple(getattr(module, n) for n in (name, alias) if n and module_overrides(module, n, unwrap=n == alias))


def signature_params(fn: Any) -> list[inspect.Parameter] | None:
    """The parameters of callable ``fn`` as a call sees them (None: it has no signature).
    A bound method's are worked out once per function: ``inspect.signature`` is slow enough to
    show in the start-up of a short fit."""
    func = getattr(fn, "__func__", None)
    if func is not None and getattr(fn, "__self__", None) is not None:
        params = _function_params(func)
        if params is None:
            return None
        # binding fills the first positional parameter (``self``); ``*args`` absorbs it instead
        bound_away = params and params[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                   inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return list(params[1:] if bound_away else params)
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=256)
def _function_params(func: Any) -> tuple[inspect.Parameter, ...] | None:
    try:
        return tuple(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None


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


def plan_optimization(module: Any, optimizers: list[Any], schedulers: list[Any], returned: Any,
                      precision: str, accumulate_grad_batches: int) -> OneXOptimization | None:
    """Choose how ``optimizers`` are driven; None: the 2.x path (one optimizer, or manual)."""
    n = len(optimizers)
    idx = takes_optimizer_idx(module.training_step)
    if not module.automatic_optimization:
        if idx and n > 1:  # pytorch-lightning 1.9.5 refuses this too
            raise ValueError("training_step takes optimizer_idx, but under manual optimization you step the "
                             "optimizers yourself: remove optimizer_idx or set self.automatic_optimization = True")
        return None
    if n == 1 and not idx:
        return None
    if not idx:
        raise ValueError(f"configure_optimizers returned {n} optimizers but training_step does not take "
                         "optimizer_idx: set self.automatic_optimization = False and step them in training_step "
                         "with opt1, opt2 = self.optimizers() (Lightning 2.x), or add the 1.x optimizer_idx argument")
    return OneXOptimization(module, optimizers, schedulers, optimizer_frequencies(returned, n), precision,
                            accumulate_grad_batches)


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

    def run_batch(self, ctx: Any, args: tuple, batch_idx: int, last_micro: bool) -> list[Any]:
        """Run ``training_step``, backward and (on the last micro-batch) the step of each active
        optimizer; return the outputs of those whose step returned a loss. ``ctx`` is the fit's
        :class:`~distengine.loop_context.LoopContext`."""
        from distengine import loop as _loop  # the loop imports this module: look it up at call time

        module, p = ctx.module, ctx.progress
        outputs: list[Any] = []
        for i in self.active(batch_idx):
            opt = ctx.optimizers[i]
            if self.toggle:
                module.toggle_optimizer(opt)
            try:
                out = self._closure(ctx, args, i, last_micro)
                if last_micro:  # 1.9.5 steps (and counts the step) even when the loss was None
                    _loop._optimizer_step(ctx, opt)
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
        return outputs

    def _closure(self, ctx: Any, args: tuple, i: int, last_micro: bool) -> Any:
        """training_step (+ training_step_end) and backward for optimizer ``i``; the detached
        output (``{"loss": ...}`` for a bare tensor), or None when no loss was returned."""
        from distengine import loop as _loop

        prec, hooks, strategy, state = ctx.precision, ctx.hooks, ctx.strategy, ctx.state
        step_end = ctx.adapted.step_end
        accum = ctx.flags.accumulate_grad_batches
        kwargs = {"optimizer_idx": i} if self.pass_idx else {}
        with strategy.no_sync(strategy.model, last_micro):
            with prec.autocast() if prec.is_mixed else contextlib.nullcontext():
                out = strategy.step_fn(*args, **kwargs)
            loss = _loop._extract_loss(ctx, out)
            if step_end is not None:
                out = step_end(out)
                loss = _loop._extract_loss(ctx, out)
            if loss is None:
                return None
            if not state.loss_checked:
                _loop._check_first_loss(ctx, loss)
            if ctx.flags.on_nonfinite_loss == "error":
                _loop._check_nonfinite(ctx, loss)  # one host read per optimizer call
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


def step_end_hook(module: Any) -> Callable[[Any], Any] | None:
    """``training_step_end(outputs)`` or the 0.x ``training_end(outputs)``, wrapped so that a
    None return keeps the step's output (1.9.5's rule for ``training_step_end``): a hook
    that only inspects the output must not turn every batch into a skipped one."""
    for name in ("training_step_end", "training_end"):
        if hasattr(type(module), name) and (name != "training_end" or not _no_argument_hook(module, name)):
            hook = getattr(module, name)

            def wrapped(out: Any, hook: Callable = hook) -> Any:
                ret = hook(out)
                return out if ret is None else ret

            return wrapped
    return None


def training_end_hook(module: Any) -> Callable[[], Any] | None:
    """The argument-less ``training_end(self)``: called once after the last training step."""
    if hasattr(type(module), "training_end") and _no_argument_hook(module, "training_end"):
        return module.training_end
    return None


def _no_argument_hook(module: Any, name: str) -> bool:
    params = _params(getattr(module, name))
    return not any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)

def _detach(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detach(v) for v in obj)
    return obj


def _log_returned(res: Any, out: Any, epoch_level: bool) -> None:
    """Route the 1.x-style ``'log'``/``'progress_bar'`` dicts of a returned dict to the results.

    A key under both is ONE metric shown on the bar and written to the loggers (logged twice,
    its first flags would stick and the bar would never show it); the value under ``'log'``
    is the one kept."""
    if not isinstance(out, dict):
        return
    on_step, on_epoch = (False, True) if epoch_level else (True, False)
    routed: dict[str, list] = {}  # name -> [value, prog_bar, logger]
    for key, prog in (("progress_bar", True), ("log", False)):
        for name, value in (out.get(key) or {}).items():
            entry = routed.setdefault(name, [value, False, False])
            entry[0] = value
            entry[1 if prog else 2] = True
    for name, (value, prog, lg) in routed.items():
        res.log(name, value, prog, lg, on_step, on_epoch, "mean", False, 1 if epoch_level else None)
    if epoch_level:  # 1.x: other top-level scalars (e.g. 'val_loss') feed callback_metrics
        for name, value in out.items():
            if name not in ("log", "progress_bar") and name not in routed \
                    and isinstance(value, (torch.Tensor, float, int)) \
                    and (not isinstance(value, torch.Tensor) or value.numel() == 1):
                res.log(name, value, False, False, False, True, "mean", False, 1)


def legacy_checkpoint_callback(value: Any, callbacks: Any, enable_checkpointing: bool | None) -> tuple[Any, Any]:
    """``Trainer(checkpoint_callback=...)`` -> ``(callbacks, enable_checkpointing)``.

    A bool is ``enable_checkpointing`` (Lightning 1.3-1.6). A ``ModelCheckpoint`` is added to
    the callbacks, as Lightning 1.0-1.2 did, so its ``dirpath``, ``monitor`` and top-k hold
    (1.7 and later have no such flag: a TypeError).
    """
    from distengine.callbacks.model_checkpoint import ModelCheckpoint

    if value is None or isinstance(value, bool):
        return callbacks, enable_checkpointing if value is None or enable_checkpointing is not None else value
    if not isinstance(value, ModelCheckpoint):
        raise TypeError(f"checkpoint_callback must be a bool or a ModelCheckpoint, got {type(value).__name__}")
    if enable_checkpointing is False:
        raise ValueError("Trainer(checkpoint_callback=ModelCheckpoint(...)) contradicts enable_checkpointing=False; "
                         "drop one of them")
    cbs = list(callbacks) if isinstance(callbacks, (list, tuple)) else ([callbacks] if callbacks else [])
    return (cbs if any(c is value for c in cbs) else cbs + [value]), True
