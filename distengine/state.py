"""Progress counters owned by the Trainer: users read them, the loop writes them.

``Progress`` is saved in every checkpoint; together with the sampler position it tells a
resumed run exactly where to continue.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


@dataclass
class Progress:
    epoch: int = 0               # the current (or next, once epoch_done) epoch
    global_step: int = 0         # optimizer steps taken
    batches_done: int = 0        # training batches finished in the current epoch on this rank
    samples_done: int = 0        # samples of the current epoch consumed over all ranks
    epoch_done: bool = False     # the current epoch's training batches are all done
    total_batches: int = 0       # training batches run since fit began (for accumulation)
    batches_stepped: int = 0     # batches that closed an optimizer-step window (Lightning's
                                 # _batches_that_stepped): the step index of logged values
    iter_started: bool = False   # the current epoch's data iterator exists (it draws from the RNG)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            if hasattr(self, k):
                setattr(self, k, type(getattr(self, k))(v))
        if "batches_stepped" not in state:  # a checkpoint from before the counter existed
            self.batches_stepped = self.global_step

    def next_fit(self) -> None:
        """A later ``fit`` of the same Trainer goes on from where the previous one ended, as in
        Lightning: with ``max_epochs`` reached it trains nothing; with ``max_epochs`` raised it
        trains the remaining epochs. An epoch the previous fit finished or cut short (a stop
        request, ``max_steps``) counts as done, so the next fit starts the epoch after it."""
        if self.epoch_done or self.batches_done:
            self.epoch, self.batches_done, self.samples_done = self.epoch + 1, 0, 0
            self.epoch_done = self.iter_started = False


@dataclass
class TrainerStatus:
    stage: str | None = None     # "fit", "validate", "test", "predict" or None
    sanity_checking: bool = False
    stop_signal: int | None = None
    last_fn: str | None = None   # the stage of the last call, kept after it returns (state.fn)
    run_status: str = "initializing"  # "running", "finished" or "interrupted" (state.status)
    environment_ready: bool = False  # process group, device, torch flags set (once per Trainer)
    fitted_in_processes: bool = False  # a fit ran on ranks started here (rank_launch.py)
    tuned: bool = False          # trainer.tune() ran (or fit ran the 1.x finders): fit does not search again


@dataclass
class ResumePoint:
    """Where the current epoch started and what a resume still has to apply (written by the
    checkpoint restore, read by the loop)."""
    epoch_start_sample: int = 0  # samples over all ranks done before this epoch's run began
    epoch_start_batch: int = 0   # batches done before this epoch's run began (on this rank)
    pending_rng: Any = None      # this rank's saved RNG state, applied by the loop (see train_epoch)
    rng_after_iter: bool = True  # apply it after creating the data iterator (a mid-epoch checkpoint)
