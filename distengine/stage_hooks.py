"""The hook tables of a stage run, decided once per run: for every hook name, the callbacks'
implementations (bound to the Trainer and module, as Lightning calls them) and the module's
(its 2.x method, then the 1.x alias, compat.py), so the loops call plain tuples of functions
and pay nothing for hooks nobody overrides. Also the module's ``configure_callbacks()``."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from distengine import compat
from distengine.callbacks.base import CALLBACK_HOOKS, HookDispatcher
from distengine.loop_context import Adapted, Hooks
from distengine.module import MODULE_HOOKS, module_overrides
from distengine.profilers import wiring as profiling

# The hooks where Lightning's self.log raises (its _FxValidator): logging there has no step or
# epoch to belong to. The module's and the callbacks' hooks alike; per-batch hooks are not
# among them except predict's.
NO_LOG_HOOKS = frozenset({
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_end", "on_validation_end", "on_test_end", "on_predict_start", "on_predict_end",
    "on_predict_epoch_start", "on_predict_epoch_end", "on_predict_batch_start", "on_predict_batch_end",
    "on_exception", "on_save_checkpoint", "on_load_checkpoint"})


@dataclass(frozen=True)
class HookTables:
    all: Hooks         # the callbacks' then the module's implementation of each hook
    callbacks: Hooks
    module: Hooks
    adapted: Adapted   # the module's 1.x style (compat.py)


def build_hooks(trainer: Any, module: Any, callbacks: list[Any], results: Any, profiler: Any,
                profiled: bool) -> HookTables:
    dispatcher = HookDispatcher(callbacks)
    for cb in callbacks:  # self.log in a callback logs through the module, as in Lightning
        cb.log, cb.log_dict = module.log, module.log_dict
    callback_hooks: dict[str, tuple] = {}
    module_hooks: dict[str, tuple] = {}
    hooks: dict[str, tuple] = {}
    for name in set(CALLBACK_HOOKS) | set(MODULE_HOOKS):
        cb = tuple(functools.partial(f, trainer, module) for f in (dispatcher[name] if name in CALLBACK_HOOKS else ()))
        mod = compat.hook_methods(module, name) if name in MODULE_HOOKS else ()
        if name in NO_LOG_HOOKS:  # self.log there raises, as in Lightning
            cb, mod = _no_log(name, cb, results), _no_log(name, mod, results)
        callback_hooks[name], module_hooks[name] = cb, mod
        hooks[name] = cb + mod
    adapted = compat.adapt(module)  # the 1.x style, decided once per run
    if profiled:  # timed hooks; an unprofiled run calls the hooks themselves
        profiling.profiled_hooks(profiler, module, hooks, callback_hooks, module_hooks)
    return HookTables(hooks, callback_hooks, module_hooks, adapted)


def _no_log(name: str, fns: tuple, results: Any) -> tuple:
    """``fns`` wrapped so that ``self.log`` inside them raises (see Module.log)."""
    def guarded(fn: Any) -> Any:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            previous, results.no_log_hook = results.no_log_hook, name
            try:
                return fn(*args, **kwargs)
            finally:
                results.no_log_hook = previous
        call.func = getattr(fn, "func", fn)  # the callback's method, as the profiler names it (profilers/wiring.py)
        return call
    return tuple(guarded(fn) for fn in fns)


def model_callbacks(callbacks: list[Any], module: Any) -> list[Any]:
    """The Trainer's callbacks with the module's ``configure_callbacks()``, as in Lightning: each
    replaces the Trainer's callbacks of a type it is (a subclass of), then checkpoint callbacks
    are moved last (and the finders first)."""
    from collections.abc import Sequence

    from distengine.callbacks.base import Callback
    from distengine.callbacks.checkpoint import Checkpoint
    from distengine.callbacks.finders import BatchSizeFinder, LearningRateFinder

    if not module_overrides(module, "configure_callbacks"):
        return callbacks
    returned = module.configure_callbacks()
    if not returned:
        return callbacks
    mine = list(returned) if isinstance(returned, Sequence) else [returned]
    theirs = {type(c) for c in callbacks} - {Callback}
    replaced = {t for m in {type(c) for c in mine} for t in theirs if issubclass(m, t)}
    merged = [c for c in callbacks if type(c) not in replaced] + mine
    finders = [c for c in merged if isinstance(c, (BatchSizeFinder, LearningRateFinder))]
    last = [c for c in merged if isinstance(c, Checkpoint) and c not in finders]
    return finders + [c for c in merged if c not in finders and c not in last] + last
