"""``Callback`` at Lightning's module path (``lightning.pytorch.callbacks.callback``); the class is
defined in :mod:`distengine.callbacks.base` (also ``distengine.callbacks.Callback``)."""
from distengine.callbacks.base import Callback

__all__ = ["Callback"]
