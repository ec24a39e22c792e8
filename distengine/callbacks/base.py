"""The callback base class and the dispatcher that calls only overridden hooks.

A callback receives the same hooks as :class:`distengine.Module`, with Lightning's
arguments (``trainer, module`` first). Which callbacks override which hook is decided
once, when the Trainer is built, so a hook nobody overrides costs nothing per step.

Example::

    class PrintLoss(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.is_global_zero and batch_idx % 100 == 0:
                print(trainer.global_step, float(outputs["loss"]))
"""
from __future__ import annotations

from typing import Any, Callable

#: Every hook a callback may implement. The Module implements the same names
#: without the ``trainer, module`` arguments.
CALLBACK_HOOKS = (
    "setup", "teardown",
    "on_fit_start", "on_fit_end",
    "on_sanity_check_start", "on_sanity_check_end",
    "on_train_start", "on_train_end",
    "on_train_epoch_start", "on_train_epoch_end",
    "on_validation_start", "on_validation_end",
    "on_validation_epoch_start", "on_validation_epoch_end",
    "on_test_start", "on_test_end",
    "on_test_epoch_start", "on_test_epoch_end",
    "on_predict_start", "on_predict_end",
    "on_predict_epoch_start", "on_predict_epoch_end",
    "on_train_batch_start", "on_train_batch_end",
    "on_validation_batch_start", "on_validation_batch_end",
    "on_test_batch_start", "on_test_batch_end",
    "on_predict_batch_start", "on_predict_batch_end",
    "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad",
    "on_save_checkpoint", "on_load_checkpoint",
    "on_exception",
)


class Callback:
    """Base class for callbacks. Override any hook in :data:`CALLBACK_HOOKS`.

    ``state_dict``/``load_state_dict`` are saved in and restored from checkpoints under
    :attr:`state_key` (the class name unless overridden, so two instances of one class
    should override it).
    """

    @property
    def state_key(self) -> str:
        return type(self).__qualname__

    @property
    def _legacy_state_keys(self) -> tuple[str, ...]:
        """Keys earlier distengine versions saved this callback's state under: still restored."""
        return ()

    def _generate_state_key(self, **kwargs: Any) -> str:
        """Lightning's form of a :attr:`state_key` that tells instances apart by their settings:
        ``ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}``."""
        return f"{type(self).__qualname__}{kwargs!r}"

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


def _noop(self, *args, **kwargs):  # default body shared by all hooks
    return None


for _name in CALLBACK_HOOKS:
    setattr(Callback, _name, _noop)
del _name


def overrides(obj: object, name: str, base: type) -> bool:
    """True when ``obj``'s class defines ``name`` differently from ``base``, or ``obj`` itself
    holds a callable ``name`` (a hook set on the instance, as :class:`LambdaCallback` does)."""
    if callable(getattr(obj, "__dict__", {}).get(name)):
        return True
    if not issubclass(type(obj), base):  # a stand-in (unittest.mock.Mock(spec=Callback)): every hook it has
        return callable(getattr(obj, name, None))
    impl = getattr(type(obj), name, None)
    return impl is not None and impl is not getattr(base, name, None)


class HookDispatcher:
    """Holds, per hook name, the list of bound callback methods that override it.

    Built once; ``dispatcher[name]`` is a (possibly empty) tuple to loop over. The loop
    calls ``for fn in hooks["on_train_batch_end"]: fn(trainer, module, ...)``.
    """

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = list(callbacks)
        self._table: dict[str, tuple[Callable[..., Any], ...]] = {}
        for name in CALLBACK_HOOKS:
            self._table[name] = tuple(
                getattr(cb, name) for cb in self.callbacks if overrides(cb, name, Callback)
            )

    def __getitem__(self, name: str) -> tuple[Callable[..., Any], ...]:
        return self._table[name]

    def call(self, name: str, *args: Any) -> None:
        for fn in self._table[name]:
            fn(*args)
