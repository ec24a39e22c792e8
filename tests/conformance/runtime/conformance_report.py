"""What a corpus script hands back to the conformance harness (the same file for both sides).

`report(trainer, model, **extra)` writes, per rank, into $CONFORMANCE_OUT:
  weights-rank{R}.pt   the module's state dict (CPU tensors)
  result-rank{R}.json  global_step, current_epoch, callback_metrics (floats), and `extra`
"""
import json
import os

import torch


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and hasattr(value, "dtype"):  # a numpy scalar (1.9.5's optimizer_idx)
        return value.item()
    return value


def report(trainer, model, **extra):
    out = os.environ.get("CONFORMANCE_OUT", ".")
    os.makedirs(out, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
               os.path.join(out, f"weights-rank{rank}.pt"))
    result = {
        "global_step": int(trainer.global_step),
        "current_epoch": int(trainer.current_epoch),
        "callback_metrics": {k: _plain(v) for k, v in sorted(trainer.callback_metrics.items())},
        "extra": _plain(extra),
    }
    with open(os.path.join(out, f"result-rank{rank}.json"), "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)


def regression_data(n, seed=0, features=8):
    """A deterministic regression set, as a script would build from a fixed generator."""
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = x @ torch.linspace(-1, 1, features).unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def classification_data(n, seed=0, features=8, classes=3):
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, :classes] * torch.arange(1, classes + 1)).argmax(dim=1)
    return TensorDataset(x, y)
