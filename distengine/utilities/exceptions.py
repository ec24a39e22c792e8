"""``MisconfigurationException``, as ``pytorch_lightning.utilities.exceptions`` (and
``lightning_fabric.utilities.exceptions``) define it: the error for a bad Trainer, module or
callback configuration.

distengine raises it where Lightning does, as :class:`ConfigError` (or
:class:`ConfigTypeError`): a subclass of both ``MisconfigurationException`` and the
built-in error distengine raised there before (``ValueError``/``TypeError``), so both
``except MisconfigurationException`` (Lightning code) and ``except ValueError`` (older
distengine code) catch it.

Example::

    from distengine.utilities.exceptions import MisconfigurationException
    try:
        Trainer(accelerator="tpu")
    except MisconfigurationException as e:
        print(e)
"""
from __future__ import annotations

__all__ = ["ConfigError", "MisconfigurationException", "ConfigTypeError"]


class MisconfigurationException(Exception):
    """A configuration the Trainer cannot run (Lightning's name, Lightning's base: ``Exception``)."""


class ConfigError(MisconfigurationException, ValueError):
    """A bad value in the configuration: caught by ``except MisconfigurationException`` and ``except ValueError``."""


class ConfigTypeError(MisconfigurationException, TypeError):
    """A value of the wrong type in the configuration: caught as ``MisconfigurationException`` and ``TypeError``."""
