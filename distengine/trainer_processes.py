"""The Trainer's side of ``strategy="ddp_notebook"``/``"ddp_fork"``/``"ddp_spawn"``: run a stage
on ranks started from this interpreter (:mod:`distengine.distributed.processes`) and bring
rank 0's outcome back into this Trainer and module. Mixed into the Trainer.

What comes back, as in Lightning's ``_MultiProcessingLauncher`` and more: the stage's return
value (validate/test metrics, predictions), after ``fit`` the trained weights (loaded into the
caller's module, non-strict as Lightning does), ``global_step``/``current_epoch``,
``callback_metrics``/``logged_metrics``, and the state of the ModelCheckpoint and EarlyStopping
callbacks (``best_model_path``, ``best_model_score``, ``stopped_epoch``...).
"""
from __future__ import annotations

import os
from typing import Any


class ProcessesMixin:
    """``_run_in_processes``: the stage on ranks this process starts."""

    _fitted_in_processes = False

    def _starts_processes(self) -> bool:
        return getattr(self._strategy, "start_method", "popen") in ("spawn", "fork", "forkserver")

    def _run_in_processes(self, method: str, args: tuple) -> Any:
        from distengine.distributed import processes

        strategy = self._strategy
        what = f"strategy={strategy.name!r}" if strategy.name else f"strategy=DDPStrategy(start_method="\
            f"{strategy.start_method!r})"
        if method == "fit" and self._fitted_in_processes:  # Lightning's limit, and its words
            raise NotImplementedError(f"calling trainer.fit() twice on the same Trainer with {what} is not "
                                      "supported; create a new Trainer and pass fit(ckpt_path=...)")
        out = processes.run(_RankJob(self, method, args), self._devices, strategy.start_method, what=what,
                            cuda_visible_devices=self._rank_gpus())
        self._apply_rank_zero(out, args[1] if method == "_evaluate" else args[0])
        self._fitted_in_processes |= method == "fit"
        return out["returned"]

    def _rank_gpus(self) -> str | None:
        """``CUDA_VISIBLE_DEVICES`` for the ranks: the chosen GPUs, in rank order (through any
        ``CUDA_VISIBLE_DEVICES`` already set), so rank r uses ``cuda:r``."""
        if self.accelerator != "gpu":
            return None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        names = [v.strip() for v in visible.split(",")] if visible else None
        return ",".join(names[i] if names else str(i) for i in self._gpu_ids)

    def _join_started_ranks(self) -> None:
        """In a rank: this Trainer (a copy of the parent's) now belongs to a job of several ranks."""
        from distengine.distributed.env import detect

        self.env = self._writer.env = detect()

    def _rank_zero_outcome(self, method: str, returned: Any) -> dict[str, Any]:
        """What the parent restores; every rank computes the weights (torchmetrics states may sync)."""
        import torch

        weights = None
        if method == "fit" and self._module is not None:
            weights = {k: v.detach().cpu() for k, v in self._module.state_dict().items()}
        return {
            "returned": returned, "weights": weights, "progress": self.progress.state_dict(),
            "stopped_in_epoch": self._loop_state.stopped_in_epoch,
            "callback_metrics": {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
                                 for k, v in self.callback_metrics.items()},
            "logged_metrics": dict(self.logged_metrics),
            "callbacks": {cb.state_key: cb.state_dict() for cb in _stateful_callbacks(self.callbacks)},
            "logger_versions": [getattr(lg, "version", None) for lg in self._loggers],
        }

    def _apply_rank_zero(self, out: dict[str, Any], model: Any) -> None:
        if model is None:
            model = self._module
        if out["weights"] is not None:
            # non-strict, as Lightning: the module may have grown or lost layers in the ranks
            model.load_state_dict(out["weights"], strict=False)
        self._module = model
        self.progress.load_state_dict(out["progress"])
        self._loop_state.stopped_in_epoch = out["stopped_in_epoch"]
        self._results.reset_all()
        self._results.epoch_values.update(out["callback_metrics"])
        self._writer.logged_metrics = dict(out["logged_metrics"])
        for cb in _stateful_callbacks(self.callbacks):
            if cb.state_key in out["callbacks"]:
                cb.load_state_dict(out["callbacks"][cb.state_key])
        for lg, version in zip(self._loggers, out["logger_versions"]):
            # a resumed run writes into its checkpoint's version folder (checkpoint/run_folder.py)
            if version is not None and getattr(lg, "version", None) != version and hasattr(lg, "continue_version"):
                lg.continue_version(version)


def _stateful_callbacks(callbacks: list[Any]) -> list[Any]:
    """The callbacks whose state a user reads after a run; others (averaged weights, timers)
    keep the state they had in the parent."""
    from distengine.callbacks.early_stopping import EarlyStopping
    from distengine.callbacks.model_checkpoint import ModelCheckpoint

    return [cb for cb in callbacks if isinstance(cb, (ModelCheckpoint, EarlyStopping))]


class _RankJob:
    """What each started rank runs: the Trainer's ``method`` on its copy of the Trainer and
    module; rank 0 returns the outcome the parent restores."""

    def __init__(self, trainer: Any, method: str, args: tuple) -> None:
        self.trainer, self.method, self.args = trainer, method, args

    def __call__(self, rank: int) -> dict[str, Any] | None:
        t = self.trainer
        t._join_started_ranks()
        returned = getattr(t, self.method)(*self.args)
        out = t._rank_zero_outcome(self.method, returned)
        return out if rank == 0 else None
