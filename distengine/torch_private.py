"""Every private torch name the engine uses (FSDP2, DCP, AMP and a few more), in one place.

Supported torch: 2.11.0 .. 2.14.1. No other file under ``distengine/`` may reference a private
torch name (a module path or attribute starting with ``_``) directly; they call the small
functions below, each of which says what it touches and how that differs across the range.
A torch upgrade that breaks one of them breaks it here, and the tests of this module name it.

=================================================================  ====================================================
Private name                                                       Why it is needed
=================================================================  ====================================================
``FSDPModule._get_fsdp_state()``                                   the state behind a unit: its hooks and param groups
``FSDPState._fsdp_param_groups`` (2.13+, a list) /                 the unit's parameter groups, for the step-method
``FSDPState._fsdp_param_group`` (2.11, one group or ``None``)      hooks and for :func:`gathered`'s save/restore
``FSDPState._mp_policy``                                           the step's batch is not cast (only forward inputs)
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
``DefaultStager._stage`` (2.11: ``StateDictStager.close()``       on 2.11 a stager cannot stage twice: probed, and
empties ``_deepcopy_dispatch`` after every stage)                  a fresh stager used per async save there
``torch._amp_foreach_non_finite_check_and_unscale_``               GradScaler's inf/nan kernel (one launch per device)
``Optimizer._step_supports_amp_scaling``                           a fused optimizer takes ``found_inf`` itself
``GradScaler._scale``                                              the scale as a device tensor: a skipped fp16 step
                                                                   counted without a sync (``get_scale()`` syncs)
``GradScaler._per_optimizer_states``                               whether this step's gradients are unscaled yet
``MultiheadAttention._reset_parameters()``                          its initialisation, for meta-device init
``torch.nn.modules.batchnorm._BatchNorm``                          "is a BatchNorm" for every variant (Sync, Lazy,
                                                                   user subclasses): SyncBatchNorm, SWA, finetuning
``DDP reducer._rebuild_buckets()``                                 manual optimization through DDP's forward, as
                                                                   DDP's own forward does (Lightning does the same)
``SummaryWriter._get_file_writer()``                               hparams written into the run's own event file
``OptimizedModule._orig_mod``                                      the module under ``torch.compile``'s wrapper
``state_dict()._metadata``                                         a state dict's per-module versions, kept by copies
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
    "amp_non_finite_check_and_unscale_", "apply_checkpoint_wrapper", "CHECKPOINT_INDEX_PRIVATE_GLOBALS",
    "checkpoint_wrapped_module", "compiled_inner_module", "copy_state_dict_metadata", "dcp_metadata_path",
    "dcp_set_element", "ddp_rebuild_buckets", "empty_state_dict_load_planner", "fsdp_mp_policy",
    "fsdp_param_groups", "fsdp_state", "grad_scaler_scale_tensor", "grad_scaler_stage", "is_batchnorm",
    "load_state_dict_into", "mark_idle_groups_forward", "multihead_attention_reset", "optimizer_takes_found_inf",
    "restore_reshard_after_forward", "run_post_forward", "run_pre_forward", "save_reshard_after_forward",
    "set_fsdp_mp_policy", "stager_survives_stage", "summary_file_writer",
]


# ---------------------------------------------------------------------------- FSDP2 state
def fsdp_state(module: nn.Module) -> Any:
    """``module._get_fsdp_state()``: the ``FSDPState`` of an ``FSDPModule`` (same name and
    meaning on 2.11 .. 2.14.1)."""
    return module._get_fsdp_state()


def fsdp_mp_policy(state: Any) -> Any:
    """``FSDPState._mp_policy``: the ``MixedPrecisionPolicy`` the root's pre-forward applies to
    its inputs. Same attribute on 2.11 .. 2.14.1."""
    return state._mp_policy


def set_fsdp_mp_policy(state: Any, policy: Any) -> None:
    """Swap the policy :func:`fsdp_mp_policy` reads (``cast_forward_inputs`` off around a step
    method, so the batch is not cast). Same attribute on 2.11 .. 2.14.1."""
    state._mp_policy = policy


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


def grad_scaler_scale_tensor(scaler: Any) -> torch.Tensor | None:
    """``GradScaler._scale``: the current scale as a tensor on the scaler's device (``None``
    before the first ``scale()``, or for a disabled scaler). The public ``get_scale()`` returns
    a float and so waits for the device. Same attribute on 2.11 .. 2.14.1."""
    scale = getattr(scaler, "_scale", None)
    return scale if isinstance(scale, torch.Tensor) else None


def grad_scaler_stage(scaler: Any, optimizer: torch.optim.Optimizer) -> Any:
    """The ``OptState`` (READY, UNSCALED, STEPPED) of ``optimizer`` in ``scaler`` this step, from
    ``GradScaler._per_optimizer_states``: GradScaler has no public getter, and a second
    ``unscale_`` before ``update`` raises. Same attribute on 2.11 .. 2.14.1."""
    return scaler._per_optimizer_states[id(optimizer)]["stage"]


# ---------------------------------------------------------------------------- modules, DDP, TensorBoard
def multihead_attention_reset(module: nn.MultiheadAttention) -> None:
    """``nn.MultiheadAttention._reset_parameters()``: its initialisation, which it spells with
    an underscore (no public ``reset_parameters``); used to fill it after meta-device init.
    Same method on 2.11 .. 2.14.1."""
    module._reset_parameters()



def is_batchnorm(module: nn.Module) -> bool:
    """``isinstance(module, torch.nn.modules.batchnorm._BatchNorm)``: every BatchNorm (1d/2d/3d,
    SyncBatchNorm, the Lazy variants, user subclasses), and no other norm layer. The base
    class is private on 2.11 .. 2.14.1 (same name and module)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return isinstance(module, _BatchNorm)


def ddp_rebuild_buckets(ddp: Any) -> None:
    """``ddp.reducer._rebuild_buckets()``: what ``DistributedDataParallel.forward`` calls before
    preparing the reducer (a no-op after the first iteration). Same on 2.11 .. 2.14.1."""
    ddp.reducer._rebuild_buckets()


def summary_file_writer(writer: Any) -> Any:
    """``SummaryWriter._get_file_writer()``: the run's ``FileWriter`` (created on first use),
    to add summaries to the run's own event file. Same method on 2.11 .. 2.14.1."""
    return writer._get_file_writer()


def compiled_inner_module(module: Any) -> Any:
    """The module ``torch.compile`` wrapped (``OptimizedModule._orig_mod``), or ``module``
    itself when it is not such a wrapper. Same attribute on 2.11 .. 2.14.1."""
    return getattr(module, "_orig_mod", module)


def copy_state_dict_metadata(src: Any, dst: Any) -> None:
    """Copy ``src._metadata`` (the per-module versions ``nn.Module.state_dict`` attaches, which
    ``load_state_dict`` reads and ``torch.save`` keeps) onto ``dst``; nothing when ``src`` has
    none or ``dst`` cannot carry attributes (a plain dict). Same on 2.11 .. 2.14.1."""
    import copy

    if hasattr(src, "_metadata"):
        try:
            dst._metadata = copy.deepcopy(src._metadata)
        except AttributeError:
            pass
