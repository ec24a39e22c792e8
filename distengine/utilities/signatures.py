"""The parameters of a callable as a call sees them, worked out once per function."""
from __future__ import annotations

import functools
import inspect
from typing import Any


def signature_params(fn: Any) -> list[inspect.Parameter] | None:
    """The parameters of callable ``fn`` as a call sees them (None: it has no signature).
    A bound method's are worked out once per function: ``inspect.signature`` is slow enough to
    show in the start-up of a short fit."""
    func = getattr(fn, "__func__", None)
    if func is not None and getattr(fn, "__self__", None) is not None:
        params = _function_params(func)
        if params is None:
            return None
        # binding fills the first positional parameter (``self``); ``*args`` absorbs it instead
        bound_away = params and params[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                   inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return list(params[1:] if bound_away else params)
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=256)
def _function_params(func: Any) -> tuple[inspect.Parameter, ...] | None:
    try:
        return tuple(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None
