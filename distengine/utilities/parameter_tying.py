"""Tied parameters (``pytorch_lightning.utilities.parameter_tying``): find the parameters a
module reaches under several names, and tie them again after something (moving to a device
that copies, loading) untied them.

Example::

    shared = find_shared_parameters(model)    # [["encoder.emb.weight", "decoder.out.weight"]]
    model = set_shared_parameters(model, shared)
"""
from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["find_shared_parameters", "set_shared_parameters"]


def find_shared_parameters(module: nn.Module) -> list[list[str]]:
    """The names of each parameter reachable under more than one name, grouped, in
    registration order (the first name is where the parameter was first registered)."""
    names: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def set_shared_parameters(module: nn.Module, shared_params: list[list[str]]) -> nn.Module:
    """Make every name of each group in ``shared_params`` point at its first name's parameter."""
    for group in shared_params:
        ref = _get(module, group[0])
        for path in group[1:]:
            *parents, last = path.split(".")
            owner = module
            for name in parents:
                owner = getattr(owner, name)
            setattr(owner, last, ref)
    return module


def _get(module: nn.Module, path: str) -> Any:
    for name in path.split("."):
        module = getattr(module, name)
    return module
