"""Two real gloo ranks: sharding, DDP gradient sync, accumulation, exact evaluation."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import distengine as de
from tests.core.models import Regressor, make_net
from tests.helpers import run_ranks


class IndexDataset(Dataset):
    """Sample i is (features, target, i) so tests can see which rank got which sample."""

    def __init__(self, n: int, dtype=torch.float32):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 6, generator=g)
        self.y = torch.randn(n, 1, generator=g)
        self.dtype = dtype

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i], torch.tensor(float(i), dtype=self.dtype)


class Recorder(Regressor):
    def __init__(self):
        super().__init__(make_net(), optimizer="sgd")
        self.seen_train: list[int] = []
        self.seen_val: list[int] = []

    def training_step(self, batch, batch_idx):
        x, y, idx = batch
        self.seen_train += idx.long().tolist()
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y, idx = batch
        self.seen_val += idx.long().tolist()
        self.log("mean_id", idx.mean())  # weighted by batch size -> the mean sample id
        self.log("max_id", idx.max(), reduce_fx="max")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return batch[2].long().tolist()


def _trainer(tmp, **kw):
    for key, value in dict(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, num_sanity_val_steps=0).items():
        kw.setdefault(key, value)
    return de.Trainer(default_root_dir=tmp, **kw)


def _shard_and_sync(rank, tmp):
    module = Recorder()
    trainer = _trainer(tmp, max_epochs=2)
    trainer.fit(module, DataLoader(IndexDataset(20), batch_size=4, shuffle=True))
    params = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    return module.seen_train, params, trainer.world_size, trainer.global_step


def test_sampler_sharding_and_ddp_sync(tmp_path):
    (seen0, w0, ws0, steps0), (seen1, w1, ws1, steps1) = run_ranks(_shard_and_sync, 2, str(tmp_path))
    assert ws0 == ws1 == 2 and steps0 == steps1 == 6  # 10 samples per rank, batch 4 -> 3 per epoch
    for epoch in range(2):
        a, b = seen0[epoch * 10:(epoch + 1) * 10], seen1[epoch * 10:(epoch + 1) * 10]
        assert sorted(a + b) == list(range(20)), "each epoch visits every sample exactly once"
    assert seen0[:10] != seen0[10:], "the permutation changes with the epoch (set_epoch)"
    assert torch.equal(w0, w1), "DDP keeps the replicas identical"


def _count_syncs(rank, tmp, accum):
    syncs = []

    class CountHook(de.callbacks.Callback):
        def on_train_start(self, trainer, module):
            def hook(state, bucket):
                syncs.append(trainer.global_step)
                fut = torch.futures.Future()
                t = bucket.buffer()
                torch.distributed.all_reduce(t)
                fut.set_result(t / 2)
                return fut

            trainer.model.register_comm_hook(None, hook)

    module = Recorder()
    trainer = _trainer(tmp, accumulate_grad_batches=accum, callbacks=[CountHook()])
    trainer.fit(module, DataLoader(IndexDataset(32), batch_size=2))
    return syncs, trainer.global_step, torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def _single_process_large_batch():
    torch.manual_seed(0)
    module = Recorder()
    opt = module.configure_optimizers()
    ds = IndexDataset(32)
    # rank r sees samples r, r+2, ...: 4 micro-batches of 2 on each of 2 ranks = samples 16g..16g+15
    for group in range(2):
        idx = list(range(group * 16, group * 16 + 16))
        x = torch.stack([ds[i][0] for i in idx])
        y = torch.stack([ds[i][1] for i in idx])
        loss = torch.nn.functional.mse_loss(module.net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def test_accumulation_syncs_only_on_the_last_micro_batch(tmp_path):
    results = run_ranks(_count_syncs, 2, str(tmp_path), 4)
    for syncs, steps, _ in results:
        assert steps == 2  # 16 samples per rank, batches of 2 -> 8 micro-batches / 4
        assert syncs == [0, 1], "one gradient all-reduce per optimizer step (no_sync elsewhere)"
    assert torch.equal(results[0][2], results[1][2])
    # 2 ranks x 4 micro-batches x 2 samples == one batch of 16 in a single process
    assert torch.allclose(results[0][2], _single_process_large_batch(), atol=1e-6)


def _uneven_eval(rank, tmp, dtype):
    module = Recorder()
    trainer = _trainer(tmp)
    val = DataLoader(IndexDataset(9, dtype), batch_size=2)
    metrics = trainer.validate(module, val)
    preds = trainer.predict(module, DataLoader(IndexDataset(9, dtype), batch_size=2))
    return module.seen_val, metrics, [i for batch in preds for i in batch]


def test_uneven_validation_is_exact_and_does_not_hang(tmp_path):
    for dtype in (torch.float64, torch.float32):
        single = _uneven_eval(0, str(tmp_path), dtype)
        (seen0, m0, p0), (seen1, m1, p1) = run_ranks(_uneven_eval, 2, str(tmp_path), dtype)
        assert seen0 == [0, 1, 2, 3] and seen1 == [4, 5, 6, 7, 8], "no padding, contiguous shards"
        assert m0 == m1 == single[1], "2-rank metrics equal the 1-rank value exactly"
        assert m0[0]["mean_id"] == 4.0 and m0[0]["max_id"] == 8.0
        assert p0 == p1 == list(range(9)), "predictions come back in dataset order"


def _fused_sync(rank, tmp, n_metrics):
    import torch.distributed as dist

    calls = []
    original = dist.all_reduce

    class LogMany(Recorder):
        def validation_step(self, batch, batch_idx):
            for i in range(n_metrics):
                self.log(f"m{i}", batch[2].mean() + i)

    module = LogMany()
    trainer = _trainer(tmp)

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    dist.all_reduce = counting
    try:
        trainer.validate(module, DataLoader(IndexDataset(8), batch_size=2))
    finally:
        dist.all_reduce = original
    return len(calls)


def test_epoch_metrics_use_a_fixed_number_of_collectives(tmp_path):
    few = run_ranks(_fused_sync, 2, str(tmp_path), 1)
    many = run_ranks(_fused_sync, 2, str(tmp_path), 12)
    assert few == many == [2, 2], "one name check + one fused reduce, however many metrics"


def _mismatched_names(rank, tmp):
    class Divergent(Recorder):
        def validation_step(self, batch, batch_idx):
            self.log("only_on_rank_0" if self.global_rank == 0 else "only_on_rank_1", batch[2].mean())

    try:
        _trainer(tmp).validate(Divergent(), DataLoader(IndexDataset(8), batch_size=2))
    except RuntimeError as err:
        return str(err)
    return "no error"


def test_ranks_logging_different_names_get_an_error_not_a_hang(tmp_path):
    for message in run_ranks(_mismatched_names, 2, str(tmp_path), timeout=60):
        assert "ranks logged different metric names" in message
        assert "only_on_rank_0" in message and "only_on_rank_1" in message


def _sync_dist_step_values(rank, tmp):
    from distengine.loggers.base import Logger

    rows = []

    class Rec(Logger):
        def log_metrics(self, metrics, step):
            rows.append(dict(metrics))

    class StepLogger(Recorder):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("rank_value", float(self.global_rank), sync_dist=True)
            self.log("local_value", float(self.global_rank))
            return loss

    trainer = _trainer(tmp, logger=Rec(), log_every_n_steps=1)
    trainer.fit(StepLogger(), DataLoader(IndexDataset(8), batch_size=2))
    return rows


def test_sync_dist_averages_step_values_and_only_rank_zero_logs(tmp_path):
    rows0, rows1 = run_ranks(_sync_dist_step_values, 2, str(tmp_path))
    assert rows1 == [], "loggers are called on global rank zero only"
    assert rows0 and all(r["rank_value"] == 0.5 and r["local_value"] == 0.0 for r in rows0)


def test_devices_auto_follows_the_launched_world(tmp_path):
    assert run_ranks(_devices_auto, 2) == [(2, 2, 0), (2, 2, 1)]


def _devices_auto(rank):
    t = de.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    return t.num_devices, t.world_size, t.global_rank


def _divergent_training_names(rank, tmp, kind, length):
    from distengine.loggers.base import Logger

    rows = []

    class Rec(Logger):
        def log_metrics(self, metrics, step):
            rows.append((step, dict(metrics)))

    own = f"only_on_rank_{rank}"

    class Divergent(Recorder):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("shared", loss)  # logged by every rank: not part of the complaint
            if kind == "step":
                self.log(own, loss)  # per step (the training default), not synced
            else:
                self.log(own, loss, on_step=False, on_epoch=True)
            return loss

    # short: 2 steps, below the default log_every_n_steps=50, so no step log point comes;
    # long: 3 epochs of 20 steps, step metrics written every 5 steps
    samples, kw = (8, {}) if length == "short" else (80, dict(max_epochs=3, log_every_n_steps=5))
    trainer = _trainer(tmp, logger=Rec(), **kw)
    try:
        trainer.fit(Divergent(), DataLoader(IndexDataset(samples, ), batch_size=2))
    except RuntimeError as err:
        return str(err), trainer.global_step, rows, sorted(trainer.callback_metrics)
    return "no error", trainer.global_step, rows, sorted(trainer.callback_metrics)


@pytest.mark.parametrize("kind, length, first_log_point", [
    ("step", "short", 2),    # the epoch end is the first point where the ranks meet
    ("step", "long", 5),     # the first log_every_n_steps point
    ("epoch", "short", 2),   # epoch values are written at the epoch end
    ("epoch", "long", 20),
])
def test_ranks_logging_different_training_names_fail_at_the_first_log_point(tmp_path, kind, length,
                                                                          first_log_point):
    for rank, (message, step, rows, _) in enumerate(
            run_ranks(_divergent_training_names, 2, str(tmp_path), kind, length, timeout=120)):
        assert "ranks logged different metric names" in message, (rank, message)
        assert "only_on_rank_0" in message and "only_on_rank_1" in message and "\n" not in message
        assert step == first_log_point, (rank, step)
        assert not any("only_on_rank_0" in m for _, m in rows), "nothing mismatched was written"


def _validation_logged_on_rank_zero_only(rank, tmp, flag, samples=8):
    class RankZeroLogs(Recorder):
        def validation_step(self, batch, batch_idx):
            if self.global_rank == 0 or samples < 2:  # rank 1 logs nothing, even if it runs batches
                self.log("val_rank0", batch[2].mean(), rank_zero_only=flag)

    try:
        return _trainer(tmp).validate(RankZeroLogs(), DataLoader(IndexDataset(samples), batch_size=2))
    except RuntimeError as err:
        return str(err)


def test_a_rank_that_ran_batches_but_logged_nothing_is_a_mismatch(tmp_path):
    """Ranks that run no batch (uneven shards) may log nothing; a rank that ran batches may not:
    it would silently leave the 'reduced' value to the other ranks' samples alone."""
    for message in run_ranks(_validation_logged_on_rank_zero_only, 2, str(tmp_path), False):
        assert "ranks logged different metric names in validation: rank 0: ['val_rank0']; rank 1: []" \
            in message, message
        assert "rank_zero_only=True" in message and "\n" not in message
    # one sample: rank 1's shard is empty, it runs no batch and logs nothing, which is fine
    assert run_ranks(_validation_logged_on_rank_zero_only, 2, str(tmp_path), False, 1) == \
        [[{"val_rank0": 0.0}]] * 2
    # rank_zero_only=True is the way to say so: no check, no reduce, rank 0 keeps its own mean
    first, second = run_ranks(_validation_logged_on_rank_zero_only, 2, str(tmp_path), True)
    assert first == [{"val_rank0": 1.5}] and second == [{}]  # rank 0's shard is samples 0..3
