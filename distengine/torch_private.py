"""Every private torch name distengine uses, in one place, each behind a small function.

Private names (``_x`` attributes, ``torch..._module`` paths) change between torch releases
without a deprecation: this module is the only file of the library that may touch them
(``tests/unit/test_private_torch_names.py`` scans the source and fails on any other use, and on
a name used here but not listed there). Each function says what it touches and how that differs
across the supported range, torch 2.11 .. 2.14; ``tests/torch_range.py`` runs the tests of each
on the oldest and the newest. The launcher's own (the elastic agent's) are in
``launch/elastic_private.py``.

Nothing heavy is imported at module level: each function imports what it needs.
"""
from __future__ import annotations

from typing import Any


# ------------------------------------------------------------ torch.nn, amp, DDP, TensorBoard
def batch_norm_base() -> type:
    """``torch.nn.modules.batchnorm._BatchNorm``: the one base class of BatchNorm1d/2d/3d, their
    lazy forms and SyncBatchNorm (InstanceNorm derives from a sibling). Same place 2.11..2.14."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return _BatchNorm


def is_batch_norm(module: Any) -> bool:
    return isinstance(module, batch_norm_base())


def rebuild_ddp_buckets(ddp: Any) -> None:
    """``DistributedDataParallel.reducer._rebuild_buckets()``: DDP's own forward calls it before
    each backward (a no-op after the first iteration); a backward that bypasses DDP's forward
    (manual optimisation through ``Module.manual_backward``) must call it too. Same 2.11..2.14."""
    ddp.reducer._rebuild_buckets()


def grad_scaler_stage(scaler: Any, optimizer: Any) -> Any:
    """The ``OptState`` of ``optimizer`` in ``scaler`` this step (READY, UNSCALED, STEPPED), from
    ``GradScaler._per_optimizer_states``; GradScaler has no public getter. Same 2.11..2.14."""
    return scaler._per_optimizer_states[id(optimizer)]["stage"]


def grad_scaler_scale(scaler: Any) -> Any:
    """``GradScaler._scale``, the loss scale as a device tensor (``None`` before the first
    ``scale``): reading it adds no host sync, where ``get_scale()`` does. Same 2.11..2.14."""
    return getattr(scaler, "_scale", None)


def tensorboard_file_writer(writer: Any) -> Any:
    """``SummaryWriter._get_file_writer()``: the run's own ``FileWriter`` (reopened if closed),
    to add summaries into this run's folder (``add_hparams`` would open a sub-run). Same 2.11..2.14."""
    return writer._get_file_writer()
