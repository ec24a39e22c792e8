"""The learning-rate range test: :class:`LRFinder` (what ``Tuner.lr_find`` returns) and the
callback that sweeps the learning rate during the trial fit.

Lightning keeps its result class at the same module path (``lightning.pytorch.tuner.lr_finder``);
``from distengine.tuner import LRFinder`` is the same class.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch

from distengine.callbacks.base import Callback
from distengine.utilities.exceptions import ConfigError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- the LR finder
class LRFinder:
    """The result of :meth:`Tuner.lr_find`: ``results = {"lr": [...], "loss": [...]}``.

    ``loss`` holds the bias-corrected exponential moving average (beta 0.98) of the training
    loss, one value per optimizer step, which is what the suggestion and the plot use.
    """

    def __init__(self, mode: str, min_lr: float, max_lr: float, num_training: int) -> None:
        self.mode = mode
        self.min_lr = min_lr
        self.max_lr = max_lr
        self.num_training = num_training
        self.results: dict[str, list[float]] = {"lr": [], "loss": []}
        self._optimal_idx: int | None = None

    def lr_at(self, step: int) -> float:
        """The learning rate the sweep uses at optimizer step ``step`` (0-based)."""
        r = step / max(1, self.num_training - 1)
        if self.mode == "linear":
            return self.min_lr + r * (self.max_lr - self.min_lr)
        return self.min_lr * (self.max_lr / self.min_lr) ** r

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The learning rate where the smoothed loss falls fastest.

        The slope is taken against ``log10(lr)`` for the exponential sweep (the axis the plot
        shows and the one on which the sweep is evenly spaced) and against ``lr`` for the
        linear sweep. The first ``skip_begin`` and last ``skip_end`` points are ignored (the
        moving average is still warming up at the start; the end is usually the blow-up).
        Returns None when fewer than 3 finite points remain, and logs an error on the
        ``distengine.tuner.lr_finder`` logger saying so (as Lightning logs one).
        """
        lrs, losses = self.results["lr"], self.results["loss"]
        n = len(losses)
        if n - skip_begin - skip_end < 3:  # a short sweep: use what there is
            skip_begin, skip_end = min(skip_begin, n // 10), min(skip_end, 1 if n > 4 else 0)
        idx = [i for i in range(skip_begin, n - skip_end) if math.isfinite(losses[i])]
        if len(idx) < 3:
            log.error("lr_find: no learning rate suggested: %d finite loss point(s) left after skipping, 3 needed; "
                      "raise num_training or give the sweep more batches", len(idx))
            self._optimal_idx = None
            return None
        x = torch.tensor([math.log10(lrs[i]) if self.mode == "exponential" else lrs[i] for i in idx],
                         dtype=torch.float64)
        y = torch.tensor([losses[i] for i in idx], dtype=torch.float64)
        slope = torch.gradient(y, spacing=(x,))[0]
        self._optimal_idx = idx[int(torch.argmin(slope))]
        return lrs[self._optimal_idx]

    def plot(self, suggest: bool = True, path: str | None = None, show: bool = False) -> Any:
        """Draw loss against learning rate; save a PNG at ``path`` when given; return the Figure.

        Needs matplotlib (``pip install distengine[tuner]``). Uses the object-oriented API
        with the Agg canvas, so it works without a display and changes no global backend.
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("LRFinder.plot() needs matplotlib: pip install distengine[tuner]") from None
        fig = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(self.results["lr"], self.results["loss"])
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss (smoothed)")
        if suggest:
            lr = self.suggestion()
            if lr is not None and self._optimal_idx is not None:
                ax.plot(lr, self.results["loss"][self._optimal_idx], markersize=10, marker="o", color="red")
                ax.set_title(f"suggested lr = {lr:.3g}")
        if path is not None:
            fig.savefig(path, format="png")
        if show:
            import matplotlib.pyplot as plt

            plt.show()
        return fig


class _LRSweep(Callback):
    """Sets every parameter group's lr before each optimizer step; records the smoothed loss."""

    def __init__(self, finder: LRFinder, early_stop_threshold: float | None, beta: float = 0.98) -> None:
        self.finder = finder
        self.threshold = early_stop_threshold
        self.beta = beta
        self._avg = 0.0
        self._best = math.inf
        self._losses: list[float] = []  # micro-batch losses of the step in progress
        self._lr = finder.min_lr

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        # Lightning checks once configure_optimizers has run, before any batch (a manual
        # module with two optimizers would otherwise sweep forever: nothing it steps is counted)
        if len(trainer.optimizers) != 1:
            raise ConfigError(f"`model.configure_optimizers()` returned {len(trainer.optimizers)}, but learning rate "
                             "finder only works with single optimizer; tune each optimizer's lr separately")
        # the sweep sets the lr itself: the module's schedulers do not step during it (as in
        # Lightning, which swaps them for its own); a ReduceLROnPlateau would also wait for a
        # validation metric the trial never logs. Cleared in place: the loop holds this list.
        trainer.lr_scheduler_configs.clear()

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        # set on every micro-batch: a user scheduler that stepped in between is overridden
        self._lr = self.finder.lr_at(int(trainer.global_step))
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = self._lr

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._losses.append(float(loss.detach().float()))
        step = int(trainer.global_step)
        if step <= len(self.finder.results["lr"]):
            return  # the optimizer step of this batch has not happened yet (accumulation)
        if not self._losses:  # training_step returned None: a NaN point (as in Lightning), not a divergence
            self.finder.results["lr"].append(self._lr)
            self.finder.results["loss"].append(math.nan)
            return
        current = sum(self._losses) / len(self._losses)
        self._losses = []
        n = len(self.finder.results["loss"])
        if math.isfinite(current):
            self._avg = self.beta * self._avg + (1 - self.beta) * current
            smoothed = self._avg / (1 - self.beta ** (n + 1))
        else:
            smoothed = math.nan
        self.finder.results["lr"].append(self._lr)
        self.finder.results["loss"].append(smoothed)
        if not math.isfinite(smoothed):
            trainer.should_stop = True  # diverged: the rest of the sweep tells nothing
            return
        self._best = min(self._best, smoothed)
        if self.threshold is not None and n > 1 and smoothed > self.threshold * self._best:
            trainer.should_stop = True
