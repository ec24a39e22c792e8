"""Build the Trainer's checkpoint dictionary, and apply one to a Trainer or a module.

Layout (Lightning-compatible keys where they exist)::

    format_version, distengine_version, torch_version, world_size
    epoch, global_step, progress {epoch, global_step, batches_done, samples_done, epoch_done}
    state_dict            the module's weights (unwrapped from DDP and torch.compile)
    optimizer_states, lr_schedulers, precision
    data                  {"seed", "epoch", "samples_done"} the sampler position over all ranks
    rng                   one entry per rank (torch CPU/CUDA, Python, NumPy)
    callbacks             {state_key: state}
    hyper_parameters      the module's saved hyperparameters
    ...                   whatever on_save_checkpoint adds
"""
from __future__ import annotations

from typing import Any

import torch

FORMAT_VERSION = 1


def load_weights(module: torch.nn.Module, state_dict: dict[str, Any], strict: bool = True,
                 source: str = "checkpoint") -> None:
    """Load ``state_dict`` into ``module`` after checking every key and shape first, so a
    checkpoint that does not fit leaves the module untouched and the error lists the problems."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state_dict.items()
              if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape]
    problems = []
    if strict and missing:
        problems.append(f"missing keys {missing}")
    if strict and unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append(f"wrong shapes [{'; '.join(shapes)}]")
    if problems:
        raise RuntimeError(f"{source} does not fit {type(module).__name__}: " + ", ".join(problems)
                           + "; the model was left unchanged")
    module.load_state_dict(state_dict, strict=strict)
