"""The Strategy: how one rank holds the model and talks to the others.

A Strategy owns everything that differs between one process, DDP and FSDP2: the device and
the process group, how the module is wrapped or sharded, the collectives, how gradients are
clipped and accumulated without a sync, and how the state of the module and the optimizers is
gathered for a checkpoint and loaded back. The Trainer builds one from its ``strategy`` flag
(``"auto"``, ``"ddp"``, ``"fsdp"``, ``"single_device"``, or an instance) and hands it to the
loop; the loop never asks which strategy it has.

Order of calls in ``fit`` (every rank calls every method; the comments say who does work)::

    strategy.setup_environment(accelerator, env, gpu_ids, timeout_s)  # device, process group
    model = strategy.setup_module(module)       # move, convert precision, wrap/shard
                                                # (FSDP: configure_model() first, then fully_shard)
    optimizers = module.configure_optimizers()  # AFTER setup_module: FSDP2 parameters are DTensors
    per batch:
        with strategy.no_sync(model, last_micro_batch): forward, backward
        strategy.clip_gradients(optimizer, value, algorithm)
    checkpoint:
        state = strategy.module_state_dict(module)            (full: rank 0 holds it; sharded: each rank its shard)
        state = strategy.optimizer_state_dict(module, optimizer)
        strategy.load_module_state_dict(module, state) / load_optimizer_state_dict(module, optimizer, state)
    strategy.teardown()

Subclasses: :class:`SingleDeviceStrategy`, :class:`DDPStrategy` (strategies/ddp.py) and
:class:`FSDPStrategy` (strategies/fsdp.py).

Additions to the contract made while moving the Trainer onto it (issue 11 step 1):

* Before ``setup_module`` the Trainer sets ``strategy.precision`` (the Precision object:
  ``convert_module`` for "64-true"/"bf16-true"...), ``strategy.sync_batchnorm`` and
  ``strategy.one_x_mode`` (a 1.x module with ``optimizer_idx``: DDP then needs
  ``find_unused_parameters``). ``module_to_device(module)`` moves and converts; evaluation
  calls it alone (no wrapping).
* After ``setup_module``, ``strategy.step_fn`` is what the loop calls with ``(batch, batch_idx)``
  (``module.training_step``, or DDP's forward routed to it).
* ``refresh_wrapping()`` at each epoch start (a finetuning callback changed which parameters
  train, or a callback added or replaced layers: DDP is built again), ``check_wrapping(epoch)``
  after the epoch's batches (layers replaced mid-epoch: an error); ``prepare_for_backward(loss)``
  before each ``manual_backward``.
* ``reduce_boolean_decision``, ``reduce(..., reduce_op=...)`` (Lightning's spelling) and
  ``fresh()`` (an unused copy with the same options, for the tuner's trial Trainer).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from torch import nn

_NO_CONTEXT = contextlib.nullcontext()


class Strategy:
    """Base class; see the module docstring for the order of calls."""

    #: the registered name (``Trainer(strategy=name)``)
    name: str = ""
    #: how checkpoints are written: "full" (one ``.ckpt`` file written by rank 0) or
    #: "sharded" (a torch.distributed.checkpoint directory, each rank writing its shards)
    checkpoint_layout: str = "full"
    #: Lightning counts this strategy as distributed even on one device (DDP, FSDP, model
    #: parallel): a shuffled training loader then gets DistributedSampler(seed + epoch) order
    lightning_distributed: bool = False

    def __init__(self) -> None:
        self.root_device: torch.device = torch.device("cpu")
        self.model: nn.Module | None = None    # what the loop calls forward on
        self.module: nn.Module | None = None   # the user's module, unwrapped
        self.step_fn: Any = None                # what the loop calls with (batch, batch_idx)
        # set by the Trainer before setup_module
        self.precision: Any = None
        self.sync_batchnorm = False
        self.one_x_mode = False

    def fresh(self) -> Strategy:
        """A copy with the same options and nothing set up (the tuner's trial Trainer gets one)."""
        new = copy.copy(self)
        new.model = new.module = new.step_fn = new.precision = None
        new.root_device = torch.device("cpu")
        return new

    # ------------------------------------------------------------------ environment
    def setup_environment(self, accelerator: str, env: Any, gpu_ids: list[int] | None, timeout_s: float) -> None:
        """Choose the device and start the process group (idempotent)."""
        raise NotImplementedError

    @property
    def is_distributed(self) -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    @property
    def world_size(self) -> int:
        return torch.distributed.get_world_size() if self.is_distributed else 1

    @property
    def global_rank(self) -> int:
        return torch.distributed.get_rank() if self.is_distributed else 0

    def data_parallel(self, env: Any) -> tuple[int, int]:
        """``(replicas, this rank's index)`` the data loaders are split by: every rank by default;
        ``ModelParallelStrategy``: the ``data_parallel`` mesh dimension (called after setup)."""
        return env.world_size, env.rank

    def gather_predictions(self, outputs: list[Any]) -> list[Any]:
        """Every rank's predictions of one loader, concatenated in rank order: the evaluation
        shards are contiguous, so this is dataset order. A collective (every rank gets the list)."""
        from distengine.distributed import collectives

        return [item for rank_out in collectives.all_gather_object(outputs) for item in rank_out]

    # ------------------------------------------------------------------ the model
    def setup_module(self, module: nn.Module) -> nn.Module:
        """Move (or shard) ``module`` onto this rank's device and return the model the loop
        calls ``forward`` on (the module itself, a DDP wrapper, or the FSDP-sharded module)."""
        raise NotImplementedError

    def configure_model(self, module: nn.Module) -> None:
        """Call the module's ``configure_model()`` (where overridden) as Lightning does, once per
        stage before ``configure_optimizers``: with this rank's device as the default device,
        so the layers it builds are created there."""
        with self.root_device:
            module.configure_model()

    def module_to_device(self, module: nn.Module) -> None:
        """Move ``module`` to this rank's device and convert it to the precision's dtype
        (also what evaluation uses: it runs on the unwrapped module)."""
        module.to(self.root_device)
        if self.precision is not None:
            self.precision.convert_module(module)

    def refresh_wrapping(self) -> bool:
        """Called at each epoch start, after the callbacks' ``on_train_epoch_start``; a wrapper
        that depends on which parameters train is rebuilt here. True when ``model`` changed."""
        return False

    def check_wrapping(self, epoch: int) -> None:
        """Called after each epoch's training batches: a wrapper that cannot follow parameters
        added or replaced in the middle of an epoch refuses them here (one line)."""

    def prepare_for_backward(self, loss: torch.Tensor) -> None:
        """Called by ``Module.manual_backward`` before each backward (manual optimization)."""

    def evaluation_context(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """Around a whole validation/test/predict run (FSDP gathers the parameters once there)."""
        return contextlib.nullcontext()

    def no_sync(self, model: nn.Module, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch's forward+backward: gradients are synchronised only on
        the last micro-batch of an accumulation window."""
        return _NO_CONTEXT  # called every batch: one shared (reusable) context, no allocation

    def clip_gradients(self, optimizer: torch.optim.Optimizer, clip_val: float, algorithm: str = "norm") -> Any:
        """Clip the gradients of ``optimizer``'s parameters; for "norm" return the total norm
        (over every shard, on every rank)."""
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, clip_val)
            return None
        return torch.nn.utils.clip_grad_norm_(params, clip_val)

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.is_distributed:
            torch.distributed.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not self.is_distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def reduce(self, tensor: torch.Tensor, op: str = "sum", reduce_op: str | None = None) -> torch.Tensor:
        """All-reduce ``tensor`` ("sum", "mean", "max", "min"; ``reduce_op`` is Lightning's name
        for ``op``); returned unchanged when not distributed."""
        op = reduce_op or op
        if not self.is_distributed:
            return tensor
        ops = {"sum": torch.distributed.ReduceOp.SUM, "mean": torch.distributed.ReduceOp.SUM,
               "max": torch.distributed.ReduceOp.MAX, "min": torch.distributed.ReduceOp.MIN}
        out = tensor.clone()
        torch.distributed.all_reduce(out, op=ops[op])
        return out / self.world_size if op == "mean" else out

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        """``all=True``: True when every rank decided True; else True when any rank did."""
        from distengine.distributed import collectives

        device = self.root_device if self.root_device.type == "cuda" else torch.device("cpu")
        if all:
            return not collectives.any_rank(not decision, device)
        return collectives.any_rank(decision, device)

    # ------------------------------------------------------------------ state
    def module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        """The module's state for a checkpoint ("full": complete tensors; "sharded": this
        rank's shards, as DTensors)."""
        return module.state_dict()

    def load_module_state_dict(self, module: nn.Module, state: dict[str, Any], strict: bool = True) -> None:
        module.load_state_dict(state, strict=strict)

    def optimizer_state_dict(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state_dict(self, module: nn.Module, optimizer: torch.optim.Optimizer,
                                  state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def explain_error(self, exc: BaseException) -> BaseException | None:
        """A clearer error to raise (from ``exc``) when a run failed with ``exc``, or None."""
        return None

    def teardown(self) -> None:
        """Called by the Trainer at the end of every stage (fit, validate, test, predict), after
        the callbacks' ``teardown``: release what ``setup_module`` built. ``model`` becomes the
        user's module again (a DDP wrapper and its gradient buckets are dropped; Lightning's
        ``trainer.model`` is the module after ``fit`` too). The process group stays: another
        stage or Trainer in the same process reuses it."""
        self.model, self.step_fn = self.module, None
