"""Values a callback logs in epoch-end hooks are reduced across 2 ranks for this epoch (issue 26:
Results.collect_late), as the module's epoch values are."""
from __future__ import annotations

from torch.utils.data import DataLoader

from tests.distributed.test_ddp import IndexDataset, Recorder, _trainer
from tests.helpers import run_ranks


def _callback_logs(rank, tmp):
    from distengine.callbacks import Callback

    class RankLogger(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            pl_module.log("cb_train", float(trainer.global_rank) + 10.0 * trainer.current_epoch)

        def on_validation_epoch_end(self, trainer, pl_module):
            pl_module.log("cb_val", 2.0 * trainer.global_rank)

    trainer = _trainer(tmp, max_epochs=2, callbacks=[RankLogger()])
    trainer.fit(Recorder(), DataLoader(IndexDataset(8), batch_size=2), DataLoader(IndexDataset(4), batch_size=2))
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("cb_")}


def test_callback_epoch_logs_are_reduced_across_ranks(tmp_path):
    ours = run_ranks(_callback_logs, 2, str(tmp_path), timeout=90)
    assert ours[0] == ours[1] == {"cb_train": 10.5, "cb_val": 1.0}  # means over ranks 0 and 1, last epoch
