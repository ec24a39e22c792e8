"""Trainer defaults from the environment, as ``pytorch_lightning.utilities.argparse`` gives them:
``PL_TRAINER_MAX_EPOCHS=3 python train.py`` runs ``Trainer()`` as ``Trainer(max_epochs=3)``.

Every ``Trainer`` argument ``name`` can be set by ``PL_<CLASS>_<NAME>`` (``<CLASS>`` is the
Trainer's class name in capitals: ``PL_TRAINER_...``; a subclass ``MyTrainer`` reads
``PL_MYTRAINER_...``). The value is read as a Python literal (``3``, ``0.5``, ``True``,
``None``, ``[0, 1]``); anything else stays a string (``PL_TRAINER_ACCELERATOR=cpu``). An empty
variable is ignored; an argument passed to the Trainer wins over the variable.
"""
from __future__ import annotations

import ast
import functools
import inspect
import os
from argparse import Namespace
from typing import Any, Callable

__all__ = ["parse_env_variables"]


def parse_env_variables(cls: type, template: str = "PL_%(cls_name)s_%(cls_argument)s") -> Namespace:
    """The ``cls`` arguments set in the environment, as a Namespace (Lightning's ``_parse_env_variables``)."""
    found = {}
    for name in inspect.signature(cls).parameters:
        value = os.environ.get(template % {"cls_name": cls.__name__.upper(), "cls_argument": name.upper()})
        if value is None or value == "":
            continue
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass  # not a literal: the string itself (PL_TRAINER_ACCELERATOR=cpu)
        found[name] = value
    return Namespace(**found)


_parse_env_variables = parse_env_variables  # Lightning's private name, which its tests import


def _defaults_from_env_vars(init: Callable) -> Callable:
    """Wrap ``__init__`` so that ``PL_<CLASS>_<ARG>`` variables give the defaults of its keyword arguments."""

    @functools.wraps(init)
    def wrapper(self: Any, **kwargs: Any) -> None:
        init(self, **{**vars(parse_env_variables(type(self))), **kwargs})

    return wrapper
