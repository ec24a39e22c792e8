"""``LambdaCallback``: a callback made of functions, one per hook, for quick experiments.

Example::

    show = LambdaCallback(on_train_epoch_end=lambda trainer, module: print(trainer.current_epoch))
    trainer = Trainer(callbacks=[show])
"""
from __future__ import annotations

from typing import Any, Callable

from distengine.callbacks.base import CALLBACK_HOOKS, Callback

__all__ = ["LambdaCallback"]


class LambdaCallback(Callback):
    """Each keyword names a hook (any of :data:`~distengine.callbacks.base.CALLBACK_HOOKS`,
    as Lightning's ``LambdaCallback`` takes them) and gives the function called for it with the
    hook's arguments (``trainer, module, ...``). Hooks not given do nothing."""

    def __init__(self, **hooks: Callable[..., Any] | None) -> None:
        unknown = sorted(set(hooks) - set(CALLBACK_HOOKS))
        if unknown:
            raise TypeError(f"LambdaCallback got unknown hook(s) {unknown}; the hooks are those of "
                            "distengine.callbacks.base.CALLBACK_HOOKS (on_train_epoch_end, ...)")
        for name, fn in hooks.items():
            if fn is not None:
                setattr(self, name, fn)
