"""The Trainer's state as one ``dict[str, Stateful]``: save and restore are one loop each.

Every entry is keyed by its key in the checkpoint file (the format is unchanged, see
``checkpoint/apply.py``), and each value has ``state_dict()`` / ``load_state_dict(state)``.
A piece of state added to :func:`training_state` is therefore both saved and restored; a test
checks that every key has its place in :data:`RESTORE_ORDER`.

Restore order (``Checkpointer.restore``)::

    module.on_load_checkpoint(ckpt)
    callbacks            first: a finetuning callback rebuilds parameter groups the check reads
    checks               every entry's ``check`` (optimizer classes and groups, weight shapes):
                         a refused resume changes nothing else
    state_dict           the weights (a weights-only file stops here)
    optimizer_states, lr_schedulers, precision
    callback.on_load_checkpoint(ckpt)
    progress, data, rng  the position; the RNG is applied later, by the loop (see loop.train_epoch)

Module and optimizer states go through the strategy (``module_state_dict``,
``optimizer_state_dict`` and their ``load_*``), so a sharded strategy gathers or scatters them.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from distengine.distributed.rank_zero import rank_zero_warn
from distengine.state import Stateful

# weights and metadata: what a weights-only checkpoint holds (file order)
# training state: what a full checkpoint adds (file order)
RESTORE_ORDER = ("callbacks", "state_dict", "optimizer_states", "optimizer_classes", "lr_schedulers",
                 "precision", "progress", "data", "rng")
_POSITION = ("progress", "data", "rng")  # restored after the callbacks' on_load_checkpoint hooks


class Value:
    """A read-only entry (metadata such as ``global_step``): saved, never loaded back."""

    def __init__(self, get: Callable[[], Any]) -> None:
        self.get = get

    def state_dict(self) -> Any:
        return self.get()

    def load_state_dict(self, state: Any) -> None:
        pass


class ModuleState:
    def __init__(self, strategy: Any, module: torch.nn.Module) -> None:
        self.strategy, self.module = strategy, module

    def state_dict(self) -> dict[str, Any]:
        return self.strategy.module_state_dict(self.module)

    def check(self, state: dict[str, Any], source: str) -> None:
        from distengine.checkpoint.apply import check_weights

        check_weights(self.module, state, source=source)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.strategy.load_module_state_dict(self.module, state)


class OptimizerStates:
    """The optimizers' states (``optimizer_states``); ``check`` refuses a resume whose optimizers
    differ (``optimizer_classes`` is read there too)."""

    def __init__(self, strategy: Any, module: torch.nn.Module, optimizers: list[Any]) -> None:
        self.strategy, self.module, self.optimizers = strategy, module, optimizers

    def state_dict(self) -> list[dict[str, Any]]:
        return [self.strategy.optimizer_state_dict(self.module, o) for o in self.optimizers]

    def check(self, state: list[Any], source: str, ckpt: dict[str, Any]) -> None:
        from distengine.checkpoint.apply import check_optimizer_states

        check_optimizer_states(self.optimizers, ckpt, source=source)

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        for opt, s in zip(self.optimizers, state):
            self.strategy.load_optimizer_state_dict(self.module, opt, s)


class SchedulerStates:
    def __init__(self, configs: list[Any]) -> None:
        self.configs = configs

    def state_dict(self) -> list[dict[str, Any]]:
        return [c.scheduler.state_dict() for c in self.configs]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        for cfg, s in zip(self.configs, state):
            cfg.scheduler.load_state_dict(s)


class CallbackStates:
    def __init__(self, callbacks: list[Any]) -> None:
        self.callbacks = callbacks

    def state_dict(self) -> dict[str, Any]:
        return {cb.state_key: cb.state_dict() for cb in self.callbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        used: set[str] = set()
        for cb in self.callbacks:
            # a checkpoint of an earlier distengine version: the key it used then
            for key in (cb.state_key, *getattr(cb, "_legacy_state_keys", ())):
                if state.get(key) is not None:
                    cb.load_state_dict(state[key])
                    used.add(key)
                    break
        left = sorted(k for k, v in state.items() if k not in used and v)  # an empty state loses nothing
        if left:
            rank_zero_warn(f"the checkpoint holds the state of callbacks this Trainer does not have: {left}; "
                           "pass them in Trainer(callbacks=...) to restore it (their state is not restored now)",
                           UserWarning)


class Checkpointer:
    """Saves and restores ``states`` (file key -> Stateful, in file order).

    ``weights`` are the keys a weights-only checkpoint holds; ``collective`` the keys whose
    ``state_dict`` is a collective (every rank calls it, rank zero keeps the result).
    """

    def __init__(self, states: dict[str, Stateful], weights: tuple[str, ...], collective: tuple[str, ...] = ()) -> None:
        self.states, self.weights, self.collective = states, weights, collective

    def save(self, weights_only: bool, is_global_zero: bool) -> dict[str, Any] | None:
        keys = [k for k in self.states if not weights_only or k in self.weights]
        gathered = {k: self.states[k].state_dict() for k in keys if k in self.collective}
        if not is_global_zero:
            return None
        return {k: gathered[k] if k in gathered else self.states[k].state_dict() for k in keys}

    def restore(self, ckpt: dict[str, Any], source: str, module_hooks: tuple = (),
                callback_hooks: tuple = (), deferred: tuple[str, ...] = ()) -> bool:
        """Load ``ckpt``; False when it was a weights-only checkpoint (only the weights loaded).
        ``deferred``: keys the caller restores later (``data``: once the training loader is loaded)."""
        for fn in module_hooks:
            fn(ckpt)
        full = "optimizer_states" in ckpt
        order = [k for k in RESTORE_ORDER if k in self.states] + \
                [k for k in self.states if k not in RESTORE_ORDER and k not in self.weights]
        if full and "callbacks" in ckpt:  # first: a callback may rebuild parameter groups (finetuning)
            self.states["callbacks"].load_state_dict(ckpt["callbacks"])
        # before anything else is restored: a refused resume leaves weights and optimizers as they are
        for key in ("optimizer_states", "state_dict"):
            obj = self.states[key]
            if key == "optimizer_states":
                obj.check(ckpt.get(key), source, ckpt)
            else:
                obj.check(ckpt[key], source)
        self.states["state_dict"].load_state_dict(ckpt["state_dict"])
        if not full:
            return False  # a weights-only checkpoint: start training from these weights
        hooks_run = False
        for key in order:
            if key in _POSITION and not hooks_run:
                hooks_run = True
                for fn in callback_hooks:
                    fn(ckpt)
            obj = self.states[key]
            missing = key not in ckpt and not getattr(obj, "load_when_missing", False)
            if key in ("callbacks", "state_dict", *deferred) or missing:
                continue
            obj.load_state_dict(ckpt.get(key, {}))
        if not hooks_run:
            for fn in callback_hooks:
                fn(ckpt)
        return True


class ProgressState:
    """``progress``: the counters, with ``samples_done`` brought up to date when saved."""

    def __init__(self, progress: Any, resume: Any, samples_per_batch: Callable[[], int]) -> None:
        self.progress, self.resume, self.samples_per_batch = progress, resume, samples_per_batch

    def state_dict(self) -> dict[str, Any]:
        p, r = self.progress, self.resume
        samples = r.epoch_start_sample + (p.batches_done - r.epoch_start_batch) * self.samples_per_batch()
        p.samples_done = samples if not p.epoch_done else 0
        return p.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        p = self.progress
        p.load_state_dict(state)
        self.resume.rng_after_iter = p.iter_started and not p.epoch_done
        if p.epoch_done:  # saved at an epoch end: continue with the next epoch
            p.epoch, p.batches_done, p.samples_done, p.epoch_done = p.epoch + 1, 0, 0, False
            p.iter_started = False


class DataPosition:
    """``data``: the sampler position over all ranks (read after ``progress``)."""

    load_when_missing = True  # a checkpoint without it resumes from the progress counters

    def __init__(self, progress: Any, resume: Any, sampler: Callable[[], Any],
                 samples_per_batch: Callable[[], int]) -> None:
        self.progress, self.resume, self.sampler, self.samples_per_batch = progress, resume, sampler, samples_per_batch

    def state_dict(self) -> dict[str, Any]:
        from distengine.data import global_seed

        p, sampler = self.progress, self.sampler()
        state = {"seed": global_seed(), "epoch": p.epoch, "samples_done": p.samples_done}
        if hasattr(sampler, "start_at_batch"):  # a combined loader: every inner loader's position
            state["combined"] = sampler.state(0 if p.epoch_done else p.batches_done)
        elif sampler is not None and sampler.drawn is not None and p.iter_started and not p.epoch_done:
            state["drawn"] = sampler.drawn  # this epoch's permutation: a seed or a generator state
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        p, sampler = self.progress, self.sampler()
        saved = state.get("combined")
        if hasattr(sampler, "start_at_batch"):  # a combined loader: positioned by the batches done
            k = p.batches_done  # (progress is restored first; 0 after an epoch's end)
            sampler.check_resume(saved, k)
            if k and self.resume.rng_after_iter and saved is not None:
                sampler.resume_drawn(saved.get("drawn"))
            sampler.start_at_batch(k)
            self.resume.epoch_start_sample, self.resume.epoch_start_batch = k * self.samples_per_batch(), k
            return
        if saved is not None and saved["batches_done"] and p.batches_done:
            raise ValueError(f"the checkpoint was saved mid-epoch with {len(saved['samples'])} combined training "
                             "loaders, but this fit has one; resume with the loaders it was saved with")
        samples = int(state.get("samples_done", p.samples_done))
        if sampler is not None and self.resume.rng_after_iter:
            # the permutation was drawn before the checkpoint: take it again, draw nothing
            # (the global generator is restored to its state at the checkpoint)
            sampler.resume_epoch(state.get("drawn"))
        if sampler is not None and samples:
            sampler.set_start(samples)
            p.batches_done = samples // self.samples_per_batch()
        self.resume.epoch_start_sample, self.resume.epoch_start_batch = samples, p.batches_done


class RNGStates:
    """``rng``: every rank's generators (a collective when saved); this rank's entry is kept
    for the loop to apply at the right moment."""

    def __init__(self, resume: Any, rank: int) -> None:
        self.resume, self.rank = resume, rank

    def state_dict(self) -> list[Any]:
        from distengine.checkpoint.rng import capture_rng_state
        from distengine.distributed import collectives

        return collectives.all_gather_object(capture_rng_state())

    def load_state_dict(self, state: list[Any]) -> None:
        if state:  # exact when the world size is unchanged; otherwise rank r continues rank r's stream
            self.resume.pending_rng = state[self.rank] if self.rank < len(state) else state[0]
