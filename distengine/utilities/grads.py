"""Gradient norms, as Lightning's ``utilities.grad_norm`` (and 1.x ``track_grad_norm``)."""
from __future__ import annotations

import torch


def grad_norm(module: torch.nn.Module, norm_type: float | int | str, group_separator: str = "/") -> dict[str, float]:
    """Each parameter's gradient p-norm and their total, with Lightning 1.x's names:
    ``grad_2.0_norm/layer.weight`` ... and ``grad_2.0_norm_total`` (values rounded to 4 places).

    Example: ``self.log_dict(grad_norm(self, 2))`` in ``on_before_optimizer_step``.
    """
    norm_type = float(norm_type)
    if norm_type <= 0:
        raise ValueError(f"`norm_type` must be a positive number or 'inf' (infinity norm), got {norm_type}")
    norms = {f"grad_{norm_type}_norm{group_separator}{name}": p.grad.detach().norm(norm_type)
             for name, p in module.named_parameters() if p.grad is not None}
    if norms:
        norms[f"grad_{norm_type}_norm_total"] = torch.stack(list(norms.values())).norm(norm_type)
    return {k: round(float(v), 4) for k, v in norms.items()}
