"""Build the Trainer's checkpoint dictionary, and apply one to a Trainer or a module.

Layout (Lightning-compatible keys where they exist)::

    format_version, distengine_version, torch_version, world_size
    epoch, global_step, progress {epoch, global_step, batches_done, samples_done, epoch_done}
    state_dict            the module's weights (unwrapped from DDP and torch.compile)
    optimizer_states, lr_schedulers, precision
    optimizer_classes     the class name of each optimizer (checked before a resume)
    data                  {"seed", "epoch", "samples_done", "drawn"?} the sampler position over all ranks
                          and what the epoch's permutation came from (one process, mid-epoch)
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
    check_weights(module, state_dict, strict, source)
    module.load_state_dict(state_dict, strict=strict)


def check_weights(module: torch.nn.Module, state_dict: dict[str, Any], strict: bool = True,
                  source: str = "checkpoint") -> None:
    """Raise one error listing every missing or unexpected key and wrong shape (nothing is loaded)."""
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


# Optimizer flags torch added over versions: a checkpoint from an older torch may lack them,
# and the optimizer fills them in, so their absence says nothing about the optimizer's class.
_LATER_TORCH_FLAGS = frozenset({"foreach", "fused", "capturable", "differentiable", "maximize",
                                "decoupled_weight_decay"})


def check_optimizer_states(optimizers: list[torch.optim.Optimizer], ckpt: dict[str, Any],
                           source: str) -> None:
    """Raise a one-line error when the optimizer states in ``ckpt`` cannot be loaded into
    ``optimizers``: another number of optimizers, another optimizer class, or another layout of
    parameter groups. Called before anything is restored, so a refused resume changes nothing.

    Checkpoints record each optimizer's class name (``optimizer_classes``). For older ones that
    do not, a saved parameter group that lacks a hyperparameter the current optimizer needs
    (SGD's groups have no ``betas`` for Adam) means the class changed.
    """
    states = ckpt.get("optimizer_states")
    if states is None:
        return
    fresh = "; to start a new run from its weights instead, use YourModule.load_from_checkpoint(path) " \
            "and fit without ckpt_path"
    if len(states) != len(optimizers):
        raise RuntimeError(f"cannot resume from {source}: it holds {len(states)} optimizer state(s) but "
                           f"configure_optimizers returned {len(optimizers)}; return the optimizers it was "
                           f"saved with{fresh}")
    classes = ckpt.get("optimizer_classes") or [None] * len(states)
    for i, (opt, state, saved_class) in enumerate(zip(optimizers, states, classes)):
        now = type(opt).__name__
        which = f"optimizer {i} " if len(optimizers) > 1 else "the optimizer "
        if saved_class is not None and saved_class != now:
            raise RuntimeError(f"cannot resume from {source}: it was saved with {which}{saved_class} but "
                               f"configure_optimizers now returns {now}, and {saved_class}'s state cannot be "
                               f"loaded into {now}; return {saved_class} again{fresh}")
        saved_groups = state.get("param_groups", []) if isinstance(state, dict) else []
        sizes = [len(g.get("params", ())) for g in saved_groups]
        own = [len(g["params"]) for g in opt.param_groups]
        if sizes != own:
            raise RuntimeError(f"cannot resume from {source}: {which}({now}) was saved with parameter groups of "
                               f"{sizes} parameters, but configure_optimizers now builds groups of {own}; build "
                               f"the same parameter groups as when it was saved{fresh}")
        if saved_class is None:
            needed = set(opt.defaults) - _LATER_TORCH_FLAGS
            missing = sorted({k for g in saved_groups for k in needed if k not in g})
            if missing:
                raise RuntimeError(f"cannot resume from {source}: the saved state of {which}lacks {missing}, "
                                   f"which {now} needs, so it was saved with another optimizer class; return "
                                   f"the optimizer it was saved with{fresh}")


def check_resume_epoch(ckpt: dict[str, Any], path: str, max_epochs: int | None) -> None:
    """Lightning's rule, before anything is restored: a full checkpoint saved in an epoch past
    ``max_epochs`` is refused (one saved in epoch ``max_epochs`` resumes a finished run)."""
    from distengine.utilities.exceptions import ConfigError

    saved = ckpt.get("epoch")
    if "optimizer_states" in ckpt and isinstance(saved, int) and max_epochs not in (None, -1) and saved > max_epochs:
        raise ConfigError(f"{path} was saved in epoch {saved}, past Trainer(max_epochs={max_epochs}); raise "
                          "max_epochs to resume it, or load only its weights")
