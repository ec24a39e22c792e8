"""Where a stage's ranks come from when this process was not launched as one of several:
:func:`launch_if_needed` re-runs the script under ``distengine launch`` (``devices=N``, plain
``python train.py``), or, for ``strategy="ddp_notebook"``/``"ddp_fork"``/``"ddp_spawn"``,
:func:`run_in_processes` runs the stage on ranks started from this interpreter
(:mod:`distengine.distributed.processes`) and brings rank 0's outcome back into this Trainer
and module.

What comes back, as in Lightning's ``_MultiProcessingLauncher`` and more: the stage's return
value (validate/test metrics, predictions), after ``fit`` the trained weights (loaded into the
caller's module, non-strict as Lightning does), ``global_step``/``current_epoch``,
``callback_metrics``/``logged_metrics``, and the state of the ModelCheckpoint and EarlyStopping
callbacks (``best_model_path``, ``best_model_score``, ``stopped_epoch``...).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from distengine.distributed.env import interactive

# Set once a --debug run said that it runs one process in place of several (launcher or Trainer).
DEBUG_ANNOUNCED = "DISTENGINE_DEBUG_ANNOUNCED"


def _run_forwarding_signals(cmd: list[str]) -> int:
    """Run the re-launch ``cmd`` and return its exit status. SIGINT/SIGTERM sent to this process
    are passed on to it (it stops gracefully and exits 128 + N) instead of killing it, as
    ``subprocess.call`` does on a KeyboardInterrupt."""
    import threading

    proc = subprocess.Popen(cmd)

    def forward(signum, frame):  # noqa: ARG001
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell reports it


def launch_if_needed(trainer: Any) -> bool:
    """Start the other ranks when this process was not launched but ``devices`` asks for
    several: True when the stage must run through :func:`run_in_processes` (the ranks are
    started from this interpreter: ddp_notebook/ddp_fork/ddp_spawn); otherwise the script
    re-runs itself under ``distengine launch`` (this process exits with its status)."""
    if trainer.env.distributed or (trainer.num_devices <= 1 and trainer.num_nodes <= 1):
        return False
    if os.environ.get("DISTENGINE_DEBUG") == "1":
        # `distengine launch --debug`: one process, in place, whatever devices says; said once
        if os.environ.get(DEBUG_ANNOUNCED) != "1":
            os.environ[DEBUG_ANNOUNCED] = "1"
            nodes = f", num_nodes={trainer.num_nodes}" if trainer.num_nodes > 1 else ""
            asked = f"devices={trainer.num_devices}{nodes}"
            print(f"distengine: --debug: Trainer({asked}) runs as 1 process here (rank 0 of 1); "
                  f"without --debug it starts {trainer.num_devices * trainer.num_nodes}", file=sys.stderr, flush=True)
        return False
    if trainer.num_nodes > 1:
        raise RuntimeError(f"Trainer(num_nodes={trainer.num_nodes}) must be started on every node by "
                           "`distengine launch --nnodes N ...` or SLURM")
    if _starts_processes(trainer.strategy):
        return True
    script = _script_to_rerun(trainer)
    flag = ["--gpus", ",".join(map(str, trainer.settings.gpu_ids))] if trainer.accelerator == "gpu" else \
        ["--cpus", str(trainer.num_devices)]
    cmd = [sys.executable, "-m", "distengine.launch", *flag, script, *sys.argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(_run_forwarding_signals(cmd))


def _script_to_rerun(trainer: Any) -> str:
    name = getattr(trainer.strategy, "name", "") or type(trainer.strategy).__name__
    kind = "gpus" if trainer.accelerator == "gpu" else "cpus"
    how = f"`distengine launch --{kind} {trainer.num_devices} your_script.py`"
    if interactive():  # sys.argv[0] is the kernel's launcher there: never re-run it
        raise RuntimeError(f"Trainer(strategy={name!r}, devices={trainer.num_devices}) re-runs the script in "
                           f"{trainer.num_devices} processes, and an interactive session (a notebook, the prompt) "
                           f"has none; use Trainer(strategy='ddp_notebook'), or run your code as a script "
                           f"with {how}")
    script = sys.argv[0] if sys.argv else ""
    if not script or script == "-c" or not os.path.exists(script):
        raise RuntimeError(f"Trainer(devices={trainer.num_devices}) needs {trainer.num_devices} processes and this "
                           f"session has no script to re-run; use Trainer(strategy='ddp_notebook') or "
                           f"strategy='ddp_spawn', or run it as {how}")
    return script


def _starts_processes(strategy: Any) -> bool:
    return getattr(strategy, "start_method", "popen") in ("spawn", "fork", "forkserver")

def run_in_processes(trainer: Any, parts: Any, method: str, args: tuple) -> Any:
    """Run the Trainer's ``method`` on ranks started from this interpreter; rank 0's outcome is
    brought back into ``trainer`` (``parts``: its shared state) and the caller's module."""
    from distengine.distributed import processes

    strategy = trainer.strategy
    what = f"strategy={strategy.name!r}" if strategy.name else f"strategy=DDPStrategy(start_method="\
        f"{strategy.start_method!r})"
    if method == "fit" and parts.status.fitted_in_processes:  # Lightning's limit, and its words
        raise NotImplementedError(f"calling trainer.fit() twice on the same Trainer with {what} is not "
                                  "supported; create a new Trainer and pass fit(ckpt_path=...)")
    out = processes.run(_RankJob(trainer, parts, method, args), trainer.num_devices, strategy.start_method, what=what,
                        cuda_visible_devices=_rank_gpus(trainer))
    _apply_rank_zero(trainer, parts, out, args[1] if method == "_evaluate" else args[0])
    parts.status.fitted_in_processes |= method == "fit"
    return out["returned"]

def _rank_gpus(trainer: Any) -> str | None:
    """``CUDA_VISIBLE_DEVICES`` for the ranks: the chosen GPUs, in rank order (through any
    ``CUDA_VISIBLE_DEVICES`` already set), so rank r uses ``cuda:r``."""
    if trainer.accelerator != "gpu":
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [v.strip() for v in visible.split(",")] if visible else None
    return ",".join(names[i] if names else str(i) for i in trainer.settings.gpu_ids)

def _join_started_ranks(trainer: Any, parts: Any) -> None:
    """In a rank: this Trainer (a copy of the parent's) now belongs to a job of several ranks."""
    from distengine.distributed.env import detect

    trainer.env = parts.writer.env = detect()

def _rank_zero_outcome(trainer: Any, parts: Any, method: str, returned: Any) -> dict[str, Any]:
    """What the parent restores; every rank computes the weights (torchmetrics states may sync)."""
    import torch

    weights = None
    if method == "fit" and trainer.lightning_module is not None:
        weights = {k: v.detach().cpu() for k, v in trainer.lightning_module.state_dict().items()}
    return {
        "returned": returned, "weights": weights, "progress": trainer.progress.state_dict(),
        "stopped_in_epoch": parts.loop_state.stopped_in_epoch,
        "callback_metrics": {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
                             for k, v in trainer.callback_metrics.items()},
        "logged_metrics": dict(trainer.logged_metrics),
        "callbacks": {cb.state_key: cb.state_dict() for cb in _stateful_callbacks(trainer.callbacks)},
        "logger_versions": [getattr(lg, "version", None) for lg in trainer.loggers],
    }

def _apply_rank_zero(trainer: Any, parts: Any, out: dict[str, Any], model: Any) -> None:
    if model is None:
        model = trainer.lightning_module
    if out["weights"] is not None:
        # non-strict, as Lightning: the module may have grown or lost layers in the ranks
        model.load_state_dict(out["weights"], strict=False)
    trainer._module = model  # trainer.lightning_module: the caller's module, with the weights
    trainer.progress.load_state_dict(out["progress"])
    parts.loop_state.stopped_in_epoch = out["stopped_in_epoch"]
    parts.results.reset_all()
    parts.results.epoch_values.update(out["callback_metrics"])
    parts.writer.logged_metrics = dict(out["logged_metrics"])
    for cb in _stateful_callbacks(trainer.callbacks):
        if cb.state_key in out["callbacks"]:
            cb.load_state_dict(out["callbacks"][cb.state_key])
    for lg, version in zip(trainer.loggers, out["logger_versions"]):
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

    def __init__(self, trainer: Any, parts: Any, method: str, args: tuple) -> None:
        self.trainer, self.parts, self.method, self.args = trainer, parts, method, args

    def __call__(self, rank: int) -> dict[str, Any] | None:
        t = self.trainer
        _join_started_ranks(t, self.parts)
        returned = getattr(t, self.method)(*self.args)
        out = _rank_zero_outcome(t, self.parts, self.method, returned)
        return out if rank == 0 else None
