"""``is_overridden``: whether a module, datamodule or callback defines its own version of a hook
(Lightning's ``pytorch_lightning.utilities.model_helpers.is_overridden``)."""
from __future__ import annotations

import functools
from typing import Any
from unittest import mock

__all__ = ["is_overridden"]


def _parent_of(instance: Any) -> type:
    from distengine.callbacks.base import Callback
    from distengine.datamodule import LightningDataModule
    from distengine.module import Module

    for parent in (Module, LightningDataModule, Callback):
        if isinstance(instance, parent):
            return parent
    raise ValueError(f"is_overridden: {type(instance).__name__} is not a LightningModule, LightningDataModule "
                     "or Callback; pass parent= (the class whose method counts as not overridden)")


def _code(fn: Any) -> Any:
    fn = getattr(fn, "__wrapped__", fn)  # functools.wraps, contextmanager
    if isinstance(fn, mock.Mock):  # a mock wrapping the method (mock.patch.object(..., wraps=...))
        fn = fn._mock_wraps
    elif isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__code__", None) if fn is not None else None


def is_overridden(method_name: str, instance: Any = None, parent: type | None = None) -> bool:
    """True when ``instance``'s ``method_name`` is not the one of ``parent`` (by default the
    LightningModule, LightningDataModule or Callback base it derives from). ``None`` gives False."""
    if instance is None:
        return False
    given, parent = parent is not None, parent or _parent_of(instance)
    mine = getattr(instance, method_name, None)
    if mine is None:
        return False
    base = getattr(parent, method_name, None)
    if base is None:  # distengine's LightningDataModule has no default loader hooks: defining one overrides
        if given:
            raise ValueError(f"is_overridden: {parent.__name__} has no method {method_name!r}")
        return True
    code = _code(mine)
    return code is not None and code is not _code(base)
