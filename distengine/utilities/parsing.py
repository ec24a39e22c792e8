"""``is_picklable`` and ``AttributeDict`` (``pytorch_lightning.utilities.parsing``)."""
from __future__ import annotations

import pickle

from distengine.module import AttributeDict

__all__ = ["AttributeDict", "is_picklable"]


def is_picklable(obj: object) -> bool:
    """Whether ``pickle.dumps(obj)`` works."""
    try:
        pickle.dumps(obj)
        return True
    except (pickle.PickleError, AttributeError, RuntimeError, TypeError):
        return False
