"""``SaveConfigCallback``: the resolved CLI config, written next to the run's logs.

At ``setup`` of the first stage it writes ``config.yaml`` to ``trainer.log_dir`` (the first
logger's ``version_N`` folder, else ``default_root_dir``) on global rank zero. An existing file
is not overwritten unless ``overwrite=True``: rank zero checks, the answer is broadcast, and
every rank raises the same error before anything trains (Lightning's rule).
"""
from __future__ import annotations

import os
import re
from typing import Any

import jsonargparse

from distengine.callbacks.base import Callback


class SaveConfigCallback(Callback):
    """Save ``config`` (parsed by ``parser``) as ``log_dir/config_filename``.

    ``multifile=True`` keeps the structure of several config files; override
    :meth:`save_config` to store the config somewhere else too (it runs on rank zero only, so it
    must not call collectives); ``save_to_log_dir=False`` then skips the file.
    """

    def __init__(self, parser: Any, config: Any, config_filename: str = "config.yaml", overwrite: bool = False,
                 multifile: bool = False, save_to_log_dir: bool = True) -> None:
        self.parser, self.config = parser, config
        self.config_filename, self.overwrite, self.multifile = config_filename, overwrite, multifile
        self.save_to_log_dir = save_to_log_dir
        self.already_saved = False
        if not save_to_log_dir and type(self).save_config is SaveConfigCallback.save_config:
            raise ValueError("SaveConfigCallback(save_to_log_dir=False) saves nothing: subclass it and implement "
                             "save_config, or pass LightningCLI(save_config_callback=None)")

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.already_saved:  # fit then test in one process: the config is written once
            return
        if self.save_to_log_dir:
            log_dir = trainer.log_dir
            path = os.path.join(log_dir, self.config_filename)
            if not self.overwrite:
                exists = trainer.strategy.broadcast(trainer.is_global_zero and os.path.isfile(path))
                if exists:
                    raise RuntimeError(
                        f"{type(self).__name__} expected {path} to NOT exist. Aborting to avoid overwriting the "
                        "results of a previous run. Delete the previous config file, set "
                        "LightningCLI(save_config_callback=None) to disable config saving, or set "
                        'LightningCLI(save_config_kwargs={"overwrite": True}) to overwrite the config file.')
            if trainer.is_global_zero:
                os.makedirs(log_dir, exist_ok=True)  # the logger creates it only when it first writes
                # keep the null entries: the file is the complete config of the run
                keep = "skip_unset" if _version(jsonargparse.__version__) >= (4, 49) else "skip_none"
                self.parser.save(self.config, path, overwrite=self.overwrite, multifile=self.multifile,
                                 **{keep: False})
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        # every rank agrees, so a later setup() (test after fit) skips on all of them
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Override to save the config somewhere else as well (rank zero only), e.g.
        ``trainer.logger.log_hyperparams({"config": self.parser.dump(self.config)})``."""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])
