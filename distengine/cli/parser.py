"""The argument parser behind :class:`distengine.cli.LightningCLI` (a jsonargparse parser).

``add_lightning_class_args`` adds a Module, DataModule, Callback or Trainer class under a
key (``--model.hidden_dim``); ``add_optimizer_args`` / ``add_lr_scheduler_args`` add an
optimizer and a scheduler chosen by class path (``--optimizer Adam --optimizer.lr 0.01``).
The Trainer's ``callbacks`` and ``logger`` flags take ``class_path``/``init_args`` values;
the built-in callbacks and loggers are imported here so their short names resolve
(``--trainer.logger CSVLogger``).

Parsing errors are raised (``exit_on_error=False``), not printed: the CLI turns each into one
line (see :mod:`distengine.cli.errors`).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
from jsonargparse import ArgumentParser

from distengine.callbacks.base import Callback
from distengine.datamodule import DataModule
from distengine.loggers.base import Logger
from distengine.module import Module


class ReduceLROnPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """torch's ``ReduceLROnPlateau`` plus the metric it watches (``monitor``), so a scheduler
    chosen in a config (``--lr_scheduler ReduceLROnPlateau --lr_scheduler.monitor val_loss``)
    says what to step on."""

    def __init__(self, optimizer: torch.optim.Optimizer, monitor: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(optimizer, *args, **kwargs)
        self.monitor = monitor


LR_SCHEDULER_TYPES = (torch.optim.lr_scheduler.LRScheduler, ReduceLROnPlateau)
# Lightning 2.x Trainer flags that distengine's Trainer lacks. A config written by Lightning
# (--print_config, its saved config.yaml) lists them with these defaults, so the parser accepts
# them; the CLI drops them before building the Trainer and refuses any other value.
LIGHTNING_ONLY_FLAGS: dict[str, tuple[Any, Any]] = {
    "enable_autolog_hparams": (bool, True), "model_registry": (str | None, None)}
# Lightning 2.x flags that distengine takes through its 1.x translation (compat_flags)
PASSED_FLAGS: dict[str, tuple[Any, Any]] = {"reload_dataloaders_every_n_epochs": (int, 0)}
_BUILTINS_IMPORTED = False


def import_builtins() -> None:
    """Import the built-in callbacks and loggers (the packages load them lazily) so that
    jsonargparse finds them by short name. One whose optional package is missing is skipped."""
    global _BUILTINS_IMPORTED
    if _BUILTINS_IMPORTED:
        return
    from distengine import callbacks, loggers

    for module in {*callbacks._LAZY.values(), *loggers._LAZY.values()}:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    _BUILTINS_IMPORTED = True


class LightningArgumentParser(ArgumentParser):
    """jsonargparse's ``ArgumentParser`` with the Lightning helpers. ``env_prefix`` is "PL" as
    in Lightning: with ``default_env=True``, ``PL_TRAINER__MAX_EPOCHS=3`` sets a value."""

    def __init__(self, *args: Any, description: str = "distengine command line tool", env_prefix: str = "PL",
                 default_env: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("exit_on_error", False)
        super().__init__(*args, description=description, env_prefix=env_prefix, default_env=default_env, **kwargs)
        import_builtins()
        self.callback_keys: list[str] = []
        self.lightning_only_keys: list[str] = []  # trainer keys dropped before the Trainer is built
        self._optimizers: dict[str, tuple[Any, str]] = {}
        self._lr_schedulers: dict[str, tuple[Any, str]] = {}

    def add_lightning_class_args(self, lightning_class: Any, nested_key: str, subclass_mode: bool = False,
                                 required: bool = True) -> list[str]:
        """Add the ``__init__`` arguments of a Module, DataModule, Callback or Trainer class (or
        of any subclass of it, with ``subclass_mode=True``) under ``nested_key``."""
        from distengine.trainer import Trainer

        if callable(lightning_class) and not isinstance(lightning_class, type):
            from jsonargparse import class_from_function

            lightning_class = class_from_function(lightning_class)
        if not (isinstance(lightning_class, type)
                and issubclass(lightning_class, (Trainer, Module, DataModule, Callback))):
            raise TypeError(f"cannot add arguments from {lightning_class!r}: give a Module, DataModule, Callback "
                            "or Trainer class (or a function returning one)")
        if issubclass(lightning_class, Callback):
            self.callback_keys.append(nested_key)
        if subclass_mode:
            return self.add_subclass_arguments(lightning_class, nested_key, fail_untyped=False, required=required)
        if issubclass(lightning_class, Trainer):
            return self._add_trainer_args(lightning_class, nested_key)
        return self.add_class_arguments(lightning_class, nested_key, fail_untyped=False, sub_configs=True)

    def _add_trainer_args(self, trainer_class: type, nested_key: str) -> list[str]:
        # The Trainer's `callbacks` and `logger` take objects (typed `Any` there); typed here,
        # they accept class_path/init_args values and are checked against the base classes.
        params = inspect.signature(trainer_class.__init__).parameters  # follows accepts_1x_flags
        typed = {"callbacks": list[Callback] | Callback | None, "logger": bool | Logger | list[Logger] | None}
        typed = {k: v for k, v in typed.items() if k in params}
        added = self.add_class_arguments(trainer_class, nested_key, fail_untyped=False, instantiate=False,
                                         sub_configs=True, skip=set(typed))
        group = self.groups.get(nested_key, self) if self.groups else self
        for name, kind in typed.items():
            group.add_argument(f"--{nested_key}.{name}", type=kind, default=params[name].default,
                               help=f"Trainer {name}: a class path with init_args, or a list of them")
            added.append(f"{nested_key}.{name}")
        for name, (kind, default) in {**PASSED_FLAGS, **LIGHTNING_ONLY_FLAGS}.items():
            if name not in params:
                only = name in LIGHTNING_ONLY_FLAGS
                group.add_argument(f"--{nested_key}.{name}", type=kind, default=default,
                                   help=f"accepted for Lightning configs; only {default!r} is allowed" if only
                                   else "as Lightning's flag")
                if only:
                    self.lightning_only_keys.append(f"{nested_key}.{name}")
                added.append(f"{nested_key}.{name}")
        return added

    def add_optimizer_args(self, optimizer_class: Any = (torch.optim.Optimizer,), nested_key: str = "optimizer",
                           link_to: str = "AUTOMATIC") -> None:
        """Add an optimizer under ``nested_key``: one class, or (a tuple) any subclass chosen by
        class path. ``AUTOMATIC``: the CLI builds it in the model's ``configure_optimizers``."""
        kwargs: dict[str, Any] = {"instantiate": False, "fail_untyped": False, "skip": {"params"}}
        if isinstance(optimizer_class, tuple):
            self.add_subclass_arguments(optimizer_class, nested_key, **kwargs)
        else:
            self.add_class_arguments(optimizer_class, nested_key, sub_configs=True, **kwargs)
        self._optimizers[nested_key] = (optimizer_class, link_to)

    def add_lr_scheduler_args(self, lr_scheduler_class: Any = LR_SCHEDULER_TYPES, nested_key: str = "lr_scheduler",
                              link_to: str = "AUTOMATIC") -> None:
        """Add a learning-rate scheduler under ``nested_key`` (as :meth:`add_optimizer_args`)."""
        kwargs: dict[str, Any] = {"instantiate": False, "fail_untyped": False, "skip": {"optimizer"}}
        if isinstance(lr_scheduler_class, tuple):
            self.add_subclass_arguments(lr_scheduler_class, nested_key, **kwargs)
        else:
            self.add_class_arguments(lr_scheduler_class, nested_key, sub_configs=True, **kwargs)
        self._lr_schedulers[nested_key] = (lr_scheduler_class, link_to)
