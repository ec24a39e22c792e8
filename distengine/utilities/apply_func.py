"""``move_data_to_device``: a batch (tensors in any nesting of dicts, lists, tuples, named
tuples and dataclasses, or objects with a ``.to`` method) moved to a device, as Lightning's."""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["move_data_to_device"]

_BLOCKING = ("cpu", "mps")  # devices where non_blocking copies are not worth it (Lightning's list)


def move_data_to_device(batch: Any, device: torch.device | str | int) -> Any:
    """Return ``batch`` with every tensor (and every object with a ``.to``) on ``device``;
    the containers are rebuilt with their own types, anything else is returned as it is.

    Example: ``batch = move_data_to_device({"x": x, "meta": [y, "id"]}, "cuda:0")``
    """
    if isinstance(device, str):
        device = torch.device(device)

    def move(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            kwargs = {"non_blocking": True} if isinstance(device, torch.device) and \
                device.type not in _BLOCKING else {}
            return obj.to(device, **kwargs)
        if isinstance(obj, Mapping):
            items = [(k, move(v)) for k, v in obj.items()]
            if isinstance(obj, defaultdict):
                return type(obj)(obj.default_factory, items)
            return type(obj)(items)
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
            return type(obj)(*(move(v) for v in obj))
        if isinstance(obj, (list, tuple)):
            return type(obj)(move(v) for v in obj)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return _move_dataclass(obj, move)
        to = getattr(obj, "to", None)
        if callable(to):
            out = to(device)
            return obj if out is None else out  # a `.to` that moves in place returns None
        return obj

    return move(batch)


def _move_dataclass(obj: Any, move: Any) -> Any:
    values = {f.name: move(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    try:
        return dataclasses.replace(obj, **values)
    except (TypeError, ValueError):  # an __init__/__post_init__ that does not take its fields back
        out = obj.__class__.__new__(obj.__class__)
        out.__dict__.update(obj.__dict__)
        for k, v in values.items():
            object.__setattr__(out, k, v)
        return out
