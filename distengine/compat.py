"""The Lightning 1.x hook style, adapted once before the fit loop (never per batch).

* **training_step_end / training_end(outputs)**: called on each step's output; returning
  None keeps the step's output, as 1.9.5 does for ``training_step_end``.
* **training_end(self)** with no argument (the tutorials' "code executed when training
  ends"): called once, after the last training step, before ``on_train_end``.
* ``*_epoch_end(outputs)``: whether the loops keep the step outputs for them.
* The 1.x hook names (``on_epoch_start``, ``on_batch_end``...) called after their 2.x hooks.
* ``Trainer(checkpoint_callback=ModelCheckpoint(...))`` (Lightning 1.0-1.2; a bool later).

What comes out is a :class:`~distengine.loop_context.Adapted` (the loop's own description of
what it calls). The 1.x several-optimizer mode (``training_step(..., optimizer_idx)``) is one of
the optimisation objects, :mod:`distengine.optimization.one_x`; the ``{"log": ...}`` dicts a
step returns are routed by :mod:`distengine.step_outputs`.
"""
from __future__ import annotations

from typing import Any, Callable

from distengine.loop_context import Adapted
from distengine.module import module_overrides
from distengine.utilities.signatures import signature_params

# 1.x hook names, called after the 2.x hook they became
HOOK_ALIASES = {"on_train_epoch_start": "on_epoch_start", "on_train_epoch_end": "on_epoch_end",
                "on_train_batch_start": "on_batch_start", "on_train_batch_end": "on_batch_end"}


def _params(fn: Any) -> list:
    return signature_params(fn) or []


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
