"""``Checkpoint``: the base class of checkpointing callbacks (``ModelCheckpoint``,
``OnExceptionCheckpoint``, or your own).

A subclass is recognised as a checkpointing callback: the Trainer runs every ``Checkpoint``
after the other callbacks, so it saves the state they have just updated.

Example::

    class SaveEveryEpoch(Checkpoint):
        def on_train_epoch_end(self, trainer, module):
            trainer.save_checkpoint(f"epoch{trainer.current_epoch}.ckpt")
"""
from __future__ import annotations

from distengine.callbacks.base import Callback

__all__ = ["Checkpoint"]


class Checkpoint(Callback):
    """Base class of checkpointing callbacks; see the module docstring."""
