"""Every private torch name distengine uses, in one place, each behind a small function.

Private names (``_x`` attributes, ``torch..._module`` paths) change between torch releases
without a deprecation: this module is the only file of the library that may touch them
(``tests/unit/test_private_torch_names.py`` scans the source and fails on any other use, and on
a name used here but not listed there). Each function says what it touches and how that differs
across the supported range, torch 2.11 .. 2.14; ``tests/torch_range.py`` runs the tests of each
on the oldest and the newest. The launcher's own (the elastic agent's) are in
``launch/elastic_private.py``.

The torch.nn/amp/DDP/TensorBoard functions import what they need; the FSDP2, DCP and
non-finite ones follow. Their table:

=================================================================  ====================================================
Private name                                                       Why it is needed
=================================================================  ====================================================
``FSDPModule._get_fsdp_state()``                                   the state behind a unit: its hooks and param groups
``FSDPState._fsdp_param_groups`` (2.13+, a list) /                 the unit's parameter groups, for the step-method
``FSDPState._fsdp_param_group`` (2.11, one group or ``None``)      hooks and for :func:`gathered`'s save/restore
``FSDPState._pre_forward`` / ``_post_forward``                     FSDP's unshard/reshard around ``training_step``
                                                                   (``register_fsdp_forward_method`` is public but
                                                                   reshards a group left IDLE by a nested forward)
``FSDPParamGroup._training_state``, ``TrainingState``              put a group back to FORWARD after a nested forward
(``torch.distributed.fsdp._fully_shard._fsdp_common``)
``FSDPState._auto_reshard_after_forward``,                         ``set_reshard_after_forward`` has no getter: saved
``FSDPParamGroup.post_forward_mesh_info``                          and restored around evaluation's gathering
``torch.distributed.algorithms._checkpoint.checkpoint_wrapper``    ``checkpoint_wrapper`` / ``CheckpointWrapper``
(``CheckpointWrapper._checkpoint_wrapped_module``)                 (no public path in 2.11 .. 2.14.1) and the module
                                                                   it wraps, for activation checkpointing under FSDP
``torch.distributed.checkpoint._traverse.set_element``             the safe load planner writes non-tensor entries
``default_planner._EmptyStateDictLoadPlanner``                     rebuild a whole state dict from the index
``state_dict_loader._load_state_dict``                             ``dcp.load`` fills only keys the caller already
                                                                   has; consolidation starts from an empty dict (as
                                                                   DCP's own ``dcp_to_torch_save``)
``FileSystemReader._get_metadata_path``                            where ``.metadata`` is, for the safe unpickler
``torch.serialization._get_layout``                                a global DCP's index pickles (tensor layouts)
``DefaultStager`` behaviour (``StateDictStager._deepcopy_dispatch``  on 2.11 ``_stage`` closes the state-dict stager,
emptied by ``close()`` after every stage on 2.11)                  so a kept stager fails its second stage
``torch._amp_foreach_non_finite_check_and_unscale_``               GradScaler's inf/nan kernel (one launch per device)
``Optimizer._step_supports_amp_scaling``                           a fused optimizer takes ``found_inf`` itself
=================================================================  ====================================================

Public APIs are used wherever they exist across the whole range: ``fully_shard``,
``FSDPModule.unshard/reshard/set_reshard_after_forward/set_requires_gradient_sync``,
``DefaultStager``/``StagingOptions``, ``dcp.save/async_save/load``, ``DefaultLoadPlanner``.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

__all__ = [
    "CHECKPOINT_INDEX_PRIVATE_GLOBALS", "amp_non_finite_check_and_unscale_", "apply_checkpoint_wrapper",
    "checkpoint_wrapped_module", "dcp_metadata_path", "dcp_set_element", "empty_state_dict_load_planner",
    "fsdp_param_groups", "fsdp_state", "load_state_dict_into", "mark_idle_groups_forward",
    "optimizer_takes_found_inf", "restore_reshard_after_forward", "run_post_forward", "run_pre_forward",
    "save_reshard_after_forward", "stager_survives_stage",
    # torch.nn, amp, DDP, TensorBoard
    "batch_norm_base", "grad_scaler_scale", "grad_scaler_stage", "is_batch_norm", "rebuild_ddp_buckets",
    "tensorboard_file_writer",
]


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


# ---------------------------------------------------------------------------- FSDP2 state
def fsdp_state(module: nn.Module) -> Any:
    """``module._get_fsdp_state()``: the ``FSDPState`` of an ``FSDPModule`` (same name and
    meaning on 2.11 .. 2.14.1)."""
    return module._get_fsdp_state()


def fsdp_param_groups(state: Any) -> list[Any]:
    """The ``FSDPParamGroup`` objects of one FSDP state, as a list (empty for a unit that
    manages no parameters).

    2.13 and 2.14.1 keep a list, ``state._fsdp_param_groups`` (a unit may hold several groups;
    the singular ``_fsdp_param_group`` is there a property that raises for more than one).
    2.11 has only ``state._fsdp_param_group``: one group or ``None``."""
    groups = getattr(state, "_fsdp_param_groups", None)
    if groups is not None:
        return list(groups)
    group = getattr(state, "_fsdp_param_group", None)
    return [] if group is None else [group]


def run_pre_forward(state: Any, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``state._pre_forward(module, args, kwargs)``: FSDP's forward pre-hook (lazy init,
    all-gather, input casting); returns the possibly cast ``(args, kwargs)``. Same signature on
    2.11 .. 2.14.1 (2.14 wraps the body in an SPMD type-check guard of its own)."""
    return state._pre_forward(module, args, kwargs)


def run_post_forward(state: Any, module: nn.Module, args: tuple, output: Any) -> Any:
    """``state._post_forward(module, args, output)``: FSDP's forward post-hook (reshard per
    ``reshard_after_forward``, backward hooks on the output). Same signature on 2.11 .. 2.14.1."""
    return state._post_forward(module, args, output)


def mark_idle_groups_forward(state: Any) -> None:
    """Set every parameter group of ``state`` left IDLE back to FORWARD
    (``group._training_state``, enum ``TrainingState`` of
    ``torch.distributed.fsdp._fully_shard._fsdp_common``; the module and the enum's IDLE and
    FORWARD members are the same on 2.11 .. 2.14.1). A nested ``self(x)`` inside a step method
    leaves the root's group IDLE, and a post-forward in the IDLE state reshards even where
    ``reshard_after_forward`` is False."""
    from torch.distributed.fsdp._fully_shard._fsdp_common import TrainingState

    for group in fsdp_param_groups(state):
        if group._training_state == TrainingState.IDLE:
            group._training_state = TrainingState.FORWARD


def save_reshard_after_forward(unit: nn.Module) -> tuple[Any, Any, list[Any]]:
    """What ``unit.set_reshard_after_forward(...)`` (public, no getter) overwrites: the state's
    ``_auto_reshard_after_forward`` (``None`` where absent) and each group's
    ``post_forward_mesh_info``. Both exist under these names on 2.11 .. 2.14.1; only the way to
    reach the groups differs (see :func:`fsdp_param_groups`)."""
    state = fsdp_state(unit)
    return (state, getattr(state, "_auto_reshard_after_forward", None),
            [g.post_forward_mesh_info for g in fsdp_param_groups(state)])


def restore_reshard_after_forward(saved: tuple[Any, Any, list[Any]]) -> None:
    """Put back what :func:`save_reshard_after_forward` returned."""
    state, auto, infos = saved
    if auto is not None:
        state._auto_reshard_after_forward = auto
    for group, info in zip(fsdp_param_groups(state), infos):
        group.post_forward_mesh_info = info


# ---------------------------------------------------------------------------- activation checkpointing
def _checkpoint_wrapper_module() -> Any:
    """``torch.distributed.algorithms._checkpoint.checkpoint_wrapper``: private on the whole
    range (2.11 .. 2.14.1 have no public re-export; ``torch.utils.checkpoint`` offers only the
    function form)."""
    from torch.distributed.algorithms._checkpoint import checkpoint_wrapper as cw

    return cw


def checkpoint_wrapped_module(module: nn.Module) -> nn.Module | None:
    """The module inside a ``CheckpointWrapper`` (its ``_checkpoint_wrapped_module``), or
    ``None`` when ``module`` is not such a wrapper."""
    cw = _checkpoint_wrapper_module()
    return module._checkpoint_wrapped_module if isinstance(module, cw.CheckpointWrapper) else None


def apply_checkpoint_wrapper(module: nn.Module, check_fn: Any) -> None:
    """Wrap each submodule for which ``check_fn`` is true in the non-reentrant
    ``checkpoint_wrapper`` (``apply_activation_checkpointing``; same arguments on the range)."""
    cw = _checkpoint_wrapper_module()
    cw.apply_activation_checkpointing(module, checkpoint_wrapper_fn=cw.checkpoint_wrapper, check_fn=check_fn)


# ---------------------------------------------------------------------------- DCP
def dcp_set_element(root: Any, path: Any, value: Any) -> None:
    """``torch.distributed.checkpoint._traverse.set_element``: store ``value`` at an
    ``OBJ_PATH`` of a nested state dict (creating containers). Same on 2.11 .. 2.14.1."""
    from torch.distributed.checkpoint._traverse import set_element

    set_element(root, path, value)


def empty_state_dict_load_planner() -> type:
    """``torch.distributed.checkpoint.default_planner._EmptyStateDictLoadPlanner`` (the class):
    a load planner that builds the state dict from the checkpoint's index instead of filling a
    given one (same class on 2.11 .. 2.14.1); subclass it for a safe variant."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner

    return _EmptyStateDictLoadPlanner


def load_state_dict_into(state_dict: dict[str, Any], storage_reader: Any, planner: Any, no_dist: bool) -> None:
    """``torch.distributed.checkpoint.state_dict_loader._load_state_dict``: the loader without
    ``dcp.load``'s copy back into the keys the caller's dict already had, so an empty dict
    with :func:`empty_state_dict_load_planner`'s planner receives the whole checkpoint (as DCP's own
    ``dcp_to_torch_save`` does). Keyword arguments identical on 2.11 .. 2.14.1."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    _load_state_dict(state_dict, storage_reader=storage_reader, planner=planner, no_dist=no_dist)


def dcp_metadata_path(reader: Any, rank: int | None = None) -> Any:
    """``FileSystemReader._get_metadata_path(rank)``: the ``.metadata`` file a reader would
    unpickle (rank-specific names exist since 2.11; the same method on the range)."""
    return reader._get_metadata_path(rank)


def _serialization_get_layout() -> Any:
    return torch.serialization._get_layout


#: private torch globals that a DCP index pickle legitimately names, as
#: ``(module, name) -> object`` for an allow-list unpickler (``torch.serialization._get_layout``
#: rebuilds a tensor layout in ``TensorProperties``; present on 2.11 .. 2.14.1)
CHECKPOINT_INDEX_PRIVATE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch.serialization", "_get_layout"): _serialization_get_layout(),
}


@functools.cache
def stager_survives_stage() -> bool:
    """Whether one ``DefaultStager`` can stage more than once (probed by behaviour, once per
    process, with a two-entry CPU state dict and no pinned or shared memory).

    2.13 and 2.14.1: yes; the stager keeps its host copy for the next stage. 2.11: no;
    ``DefaultStager._stage`` calls ``StateDictStager.close()`` after every stage, which empties
    its ``_deepcopy_dispatch`` table, and the next stage raises ``KeyError: <class 'type'>``
    (there a kept stager saves nothing anyway: its cache is cleared at every stage too)."""
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    stager = DefaultStager(StagingOptions(use_pinned_memory=False, use_shared_memory=False,
                                          use_async_staging=False, use_non_blocking_copy=False))
    probe = {"t": torch.zeros(2), "n": 1}
    try:
        stager.stage(probe)
        stager.stage(probe)
        return True
    except KeyError:
        return False
    finally:
        stager.close()


# ---------------------------------------------------------------------------- AMP
def amp_non_finite_check_and_unscale_(grads: list[torch.Tensor], found_inf: torch.Tensor,
                                      inv_scale: torch.Tensor) -> None:
    """``torch._amp_foreach_non_finite_check_and_unscale_``: GradScaler's kernel; sets
    ``found_inf`` to 1.0 when any of ``grads`` (one device and dtype) holds inf/nan, and
    multiplies them by ``inv_scale``. Same op and signature on 2.11 .. 2.14.1."""
    torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)


def optimizer_takes_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """``optimizer._step_supports_amp_scaling``: True for fused optimizers, whose ``step``
    reads ``found_inf``/``grad_scale`` attributes itself (as under GradScaler); same flag on
    2.11 .. 2.14.1."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))
