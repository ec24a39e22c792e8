"""A table of a model's layers and parameter counts, printed at fit start on rank zero.

Example::

    from distengine.callbacks import ModelSummary
    from distengine.callbacks.model_summary import summarize

    print(summarize(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()), max_depth=1))
    trainer = de.Trainer(callbacks=[ModelSummary(max_depth=2)])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from distengine import torch_private
from distengine.callbacks.base import Callback


@dataclass(frozen=True)
class ParamTotals:
    """Parameter counts of a module; shared parameters are counted once."""

    trainable: int
    non_trainable: int
    size_bytes: int

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6


def count_parameters(module: nn.Module) -> ParamTotals:
    """Trainable / non-trainable counts and the byte size of ``module``'s parameters.

    Lazy (uninitialised) parameters count as zero.
    """
    trainable = frozen = size = 0
    for p in module.parameters():  # parameters() already yields each shared tensor once
        if isinstance(p, nn.parameter.UninitializedParameter):
            continue
        n = p.numel()
        size += n * p.element_size()
        if p.requires_grad:
            trainable += n
        else:
            frozen += n
    return ParamTotals(trainable, frozen, size)


def _rows(module: nn.Module, max_depth: int) -> list[tuple[str, str, int]]:
    rows = []
    for name, sub in module.named_modules():
        if not name:
            continue
        depth = name.count(".") + 1
        if max_depth >= 0 and depth > max_depth:
            continue
        rows.append((name, type(sub).__name__, count_parameters(sub).total))
    return rows


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return str(n)


def summarize(module: nn.Module, max_depth: int = 1) -> str:
    """Render the layer table and totals of ``module`` as text.

    ``max_depth`` is how deep to list submodules: 1 lists direct children, -1 lists every
    module, 0 prints only the totals.

    >>> print(summarize(torch.nn.Sequential(torch.nn.Linear(2, 3)), max_depth=1))  # doctest: +SKIP
      | Name | Type   | Params
    -----------------------------
    0 | 0    | Linear | 9
    ...
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"summarize() needs a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(max_depth, int) or max_depth < -1:
        raise ValueError(f"max_depth={max_depth!r}: use -1 (all layers), 0 (totals only) or a positive int")
    lines: list[str] = []
    rows = _rows(module, max_depth) if max_depth != 0 else []
    if rows:
        table = [("", "Name", "Type", "Params")] + [
            (str(i), name, typ, _human(n)) for i, (name, typ, n) in enumerate(rows)]
        widths = [max(len(r[c]) for r in table) for c in range(4)]
        fmt = [" | ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
        lines.append(fmt[0])
        lines.append("-" * max(len(x) for x in fmt))
        lines.extend(fmt[1:])
        lines.append("-" * max(len(x) for x in fmt))
    totals = count_parameters(module)
    lines.extend([
        f"{_human(totals.trainable):<10} Trainable params",
        f"{_human(totals.non_trainable):<10} Non-trainable params",
        f"{_human(totals.total):<10} Total params",
        f"{totals.size_mb:<10.3f} Total estimated model params size (MB)",
    ])
    return "\n".join(lines)


class ModelSummary(Callback):
    """Print :func:`summarize` of the module at fit start, on global rank zero only.

    Args:
        max_depth: how deep the layer table goes (see :func:`summarize`).
    """

    def __init__(self, max_depth: int = 1) -> None:
        if not isinstance(max_depth, int) or max_depth < -1:
            raise ValueError(f"ModelSummary(max_depth={max_depth!r}): use -1 (all layers), 0 (totals "
                             "only) or a positive int")
        self.max_depth = max_depth

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        if not getattr(trainer, "is_global_zero", True):
            return
        target = getattr(trainer, "lightning_module", None) or module
        # a DDP or compiled wrapper would add a "module."/"_orig_mod." level to every name
        target = getattr(target, "module", target) if isinstance(target, nn.parallel.DistributedDataParallel) \
            else torch_private.compiled_inner_module(target)
        self._show(target)

    def _show(self, module: nn.Module) -> None:
        print(summarize(module, self.max_depth), flush=True)


__all__ = ["ModelSummary", "ParamTotals", "count_parameters", "summarize"]

