"""What the loops see: the parts they use, each named and typed, instead of the whole Trainer.

Each call's :class:`~distengine.stage_run.StageRun` builds one context (``StageRun.loop_context``
for ``fit``, ``StageRun.eval_context`` for ``validate``/``test``/``predict``); the loops in
:mod:`distengine.loop` and :mod:`distengine.loop_eval` read and write only these. The parts
are shared objects, not copies: the Trainer reads back what the loop writes (``LoopState``,
``Progress``) through its public properties, and a callback that sets
``trainer.accumulate_grad_batches`` or ``trainer.should_stop`` changes ``LoopFlags`` /
``LoopState`` themselves, so the loop sees it at the next point where it reads them.

::

    EvalContext   module, strategy, precision, results, status, hook tables (all / module /
                  callback), adapted (the 1.x style, compat.py), profiler, writer (loggers),
                  flags
    LoopContext   + progress, optimizers, schedulers, optimization, data (FitData), resume point,
                  stop vote, state (LoopState), sanity steps, reload_dataloaders(),
                  opt_hooks (the module's overridden optimizer_step & co, optim_hooks.py)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from distengine.data import apply_limit, loader_len
from distengine.metric_writer import MetricWriter
from distengine.metrics import Results
from distengine.module import Module
from distengine.optim_hooks import OptimHooks
from distengine.precision import Precision
from distengine.profilers.base import Profiler
from distengine.state import Progress, ResumePoint, TrainerStatus
from distengine.strategies import Strategy
from distengine.val_schedule import ValSchedule

Hooks = dict[str, tuple[Callable[..., Any], ...]]


@dataclass(frozen=True)
class Adapted:
    """What a module's 1.x style changes in the loop, decided once before it starts (compat.adapt)."""
    step_end: Callable[[Any], Any] | None        # training_step_end / training_end(outputs)
    training_end: Callable[[], Any] | None       # the argument-less 0.x training_end()
    collect_train_outputs: bool                  # training_epoch_end(outputs) is overridden
    collect_eval_outputs: dict[str, bool]        # validation/test_epoch_end, validation_end


class BatchOptimization(Protocol):
    """How the fit loop optimises one training batch: automatic (one optimizer), manual (the
    module steps) or the 1.x several-optimizer mode; the classes are in
    :mod:`distengine.optimization`, chosen once per fit (``plan_optimization``). Per epoch the
    loop calls ``start_epoch``; per batch ``run_batch`` (training_step, backward, and the steps
    a mode takes inside the batch); at the last micro-batch of each accumulation window
    ``end_window`` (the step and its count where the mode steps there)."""

    def start_epoch(self, ctx: LoopContext, parts: EpochParts) -> None: ...

    def run_batch(self, ctx: LoopContext, args: tuple, batch_idx: int, last_micro: bool) -> tuple[Any, bool]:
        """(the step's output, whether training_step returned None where that skips a batch)."""

    def end_window(self, ctx: LoopContext) -> None: ...


@dataclass(slots=True, frozen=True)
class EpochParts:
    """The pieces of a training epoch the loop prepares (the profiler may time them)."""
    step_fn: Callable[..., Any]          # the strategy's: DDP's forward (to training_step) or training_step
    backward: Callable[[Any], None]      # through the precision (module.backward)
    optimizer_step: Callable[..., None]  # optimization.steps.step_optimizer
    watch: Any                           # the non-finite loss check (optimization.steps.nonfinite_check)
    autocast: Callable[[], Any] | None   # the precision's autocast, None unless mixed


@dataclass(slots=True)
class LoopFlags:
    """The validated Trainer flags the loops read. The Trainer's attributes of the same names
    read and write these fields (``Trainer.accumulate_grad_batches = 4`` from a callback lands
    here), so the loop reads the live values."""
    max_epochs: int = -1
    min_epochs: int = 0
    max_steps: int = -1
    min_steps: int = 0
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    on_nonfinite_loss: str = "error"
    log_every_n_steps: int = 50
    check_val_every_n_epoch: int | None = 1
    reload_dataloaders_every_n_epochs: int = 0
    inference_mode: bool = True


@dataclass(slots=True)
class LoopState:
    """The loop's own mutable state, kept by the Trainer across stages and read back through
    its properties (``should_stop``, ``current_epoch``...)."""
    should_stop: bool = False            # a request (callbacks set it); the ranks vote on it
    stop_now: bool = False               # the ranks agreed: stop at this step
    stopped_in_epoch: bool = False       # the fit stopped inside an epoch (current_epoch counts it)
    loss_checked: bool = False           # the first loss of the run was checked for requires_grad
    last_loss: torch.Tensor | None = None
    skipped_nonfinite: Any = 0           # an int, or a device tensor for fused optimizers
    train_outputs: list[Any] | None = None  # the epoch's step outputs for training_epoch_end(outputs)
    nonfinite_watch: Any = None          # nonfinite.NonFiniteWatch on an accelerator, else None
    is_last_batch: bool = False          # the running training batch is the epoch's last (trainer.is_last_batch)
    min_delay_told: bool = False         # the "min_epochs/min_steps delay the stop" notice was logged

    def begin_stage(self) -> None:
        self.should_stop = self.stop_now = self.loss_checked = self.min_delay_told = False


@dataclass(slots=True)
class FitData:
    """The fit's data: the (sharded) training loader and sampler, the validation loaders, and
    the batch counts their limits give. Refilled in place when the loaders are reloaded."""
    train_loader: Any = None
    train_sampler: Any = None
    val_loaders: list[Any] = field(default_factory=list)
    num_train_batches: int | float = 0
    num_val_batches: list[int] = field(default_factory=list)
    val_schedule: ValSchedule = field(default_factory=ValSchedule)  # when fit validates (val_schedule.py)
    limits: dict[str, Any] = field(default_factory=dict)  # the Trainer's limit_*_batches
    has_val_step: bool = False           # the module defines validation_step
    # Lightning's reload clocks: the epoch each kind was last loaded at (-inf: not yet, or only
    # by a sanity check outside a validation epoch); a validation hook not called yet
    train_loaded_epoch: float = 0
    val_loaded_epoch: float = float("-inf")
    val_pending: bool = False
    train_pending: bool = False          # the training loader is loaded after the sanity check

    def val_limits(self) -> list[int]:
        return [apply_limit(self.limits["val"], loader_len(dl), "val") for dl in self.val_loaders]

    def should_validate(self) -> bool:
        return bool(self.val_loaders) and self.has_val_step and any(n > 0 for n in self.val_limits())


@dataclass(slots=True, kw_only=True)
class EvalContext:
    """The parts an evaluation loop (validate, test, predict; also inside ``fit``) uses."""
    module: Module
    strategy: Strategy
    precision: Precision
    results: Results
    status: TrainerStatus
    hooks: Hooks                         # callbacks' then the module's implementation of each hook
    module_hooks: Hooks
    callback_hooks: Hooks
    adapted: Adapted                     # the module's 1.x style, decided once (compat.py)
    profiler: Profiler
    profiling: bool                      # the profiler records (not the PassThroughProfiler)
    writer: MetricWriter
    flags: LoopFlags
    predict: Any = None                  # trainer.predict_loop (predict_state.py)


@dataclass(slots=True, kw_only=True)
class LoopContext(EvalContext):
    """The parts the fit loop uses (on top of the evaluation parts)."""
    progress: Progress
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[Any]                # LRSchedulerConfig, in configure_optimizers' order
    has_step_schedulers: bool
    optimization: BatchOptimization      # how each batch is optimised (distengine/optimization/)
    data: FitData
    resume: ResumePoint
    stop_vote: Any                       # stop_vote.StopVote
    state: LoopState
    sanity_steps: list[int] | None       # batches per val loader for the sanity check; None: none
    reload_dataloaders: Callable[[str], None]  # calls a *_dataloader hook again ("train"/"val"), refills ``data``
    load_train: Callable[[], None]       # loads the training loader (after the sanity check, as Lightning)
    step_counters: list[Any]             # optimizer hook handles, removed at the end of the run
    opt_hooks: OptimHooks                # the module's overridden optimisation hooks (optim_hooks.py)
    timed_optimizers: set[int] = field(default_factory=set)  # profiling: manual steps timed

    @property
    def global_rank(self) -> int:  # (with ``progress``: what a non-finite error names)
        return self.writer.global_rank
