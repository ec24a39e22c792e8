"""A training step log point issues ONE all-reduce: the names check and the sync_dist values
share it (issue 21 item 3.3); a second one only when every rank's names changed alike."""
from __future__ import annotations

from torch.utils.data import DataLoader

from tests.distributed.test_ddp import IndexDataset, Recorder, _trainer
from tests.helpers import run_ranks


def _step_logs(rank, tmp):
    import torch.distributed as dist

    from distengine.loggers.base import Logger
    from distengine.metrics import Results

    rows, per_log_point, calls = [], [], [0]
    names = ["all_reduce", "broadcast", "broadcast_object_list", "all_gather_object", "all_gather", "barrier"]
    for name in names:
        original = getattr(dist, name)

        def counting(*a, _original=original, **k):
            calls[0] += 1
            return _original(*a, **k)
        setattr(dist, name, counting)
    collect_step = Results.collect_step

    def counted_collect_step(self):
        before = calls[0]
        out = collect_step(self)
        per_log_point.append(calls[0] - before)
        return out
    Results.collect_step = counted_collect_step

    class Rec(Logger):
        def log_metrics(self, metrics, step):
            rows.append(dict(metrics))

    class StepLogger(Recorder):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("rank_value", float(self.global_rank), sync_dist=True)
            self.log("rank_sum", float(self.global_rank + 1), sync_dist=True, reduce_fx="sum")
            self.log("local_value", float(self.global_rank))
            if batch_idx >= 3:  # a new name on every rank: the layout changes once
                self.log("late", 10.0 * self.global_rank, sync_dist=True)
            return loss

    trainer = _trainer(tmp, logger=Rec(), log_every_n_steps=1)
    trainer.fit(StepLogger(), DataLoader(IndexDataset(12), batch_size=1))
    return rows, per_log_point


def test_one_all_reduce_per_step_log_point_and_the_same_values(tmp_path):
    (rows0, counts0), (rows1, counts1) = run_ranks(_step_logs, 2, str(tmp_path))
    assert counts0 == counts1 == [2, 1, 1, 2, 1, 1], \
        "one collective per log point; two at the first and when every rank adds a name"
    assert rows1 == []
    steps = [r for r in rows0 if "rank_value" in r]
    assert len(steps) == 6
    for i, r in enumerate(steps):
        assert r["rank_value"] == 0.5 and r["rank_sum"] == 3.0 and r["local_value"] == 0.0
        assert ("late" in r) == (i >= 3)
        if i >= 3:
            assert r["late"] == 5.0


def _diverging(rank, tmp):
    class Diverging(Recorder):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("v", 1.0, sync_dist=True)
            if batch_idx >= 2 and self.global_rank == 1:  # after the layout was agreed
                self.log("extra", 1.0, sync_dist=True)
            return loss

    try:
        _trainer(tmp, log_every_n_steps=1).fit(Diverging(), DataLoader(IndexDataset(12), batch_size=1))
    except RuntimeError as err:
        return str(err)
    return "no error"


def test_names_diverging_after_the_agreed_layout_raise_on_every_rank(tmp_path):
    for message in run_ranks(_diverging, 2, str(tmp_path), timeout=60):
        assert "ranks logged different metric names in training steps" in message
        assert "extra" in message
