"""Finetuning, SWA, accumulation schedule and the finder callbacks: exact resume, 2 ranks,
bad input. (Their weights and learning rates are compared with Lightning 2.6.6 by the
conformance scripts finetuning_backbone.py and swa.py.)"""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.callbacks import (
    BackboneFinetuning,
    BatchSizeFinder,
    GradientAccumulationScheduler,
    LearningRateFinder,
    StochasticWeightAveraging,
)
from tests.core.models import quiet_trainer
from tests.helpers import run_ranks


def data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, x @ torch.linspace(-1, 1, 6).unsqueeze(1))


class Net(de.Module):
    def __init__(self, bn=False, lr=0.05, batch_size=8):
        super().__init__()
        torch.manual_seed(0)
        layers = [nn.Linear(6, 12)] + ([nn.BatchNorm1d(12)] if bn else []) + [nn.Tanh()]
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Linear(12, 1)
        self.lr = lr
        self.batch_size = batch_size

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(filter(lambda p: p.requires_grad, self.parameters()), lr=self.lr)

    def train_dataloader(self):
        return DataLoader(data(), batch_size=self.batch_size)


def fit(tmp_path, callbacks, max_epochs, model=None, ckpt_path=None, save=None, **kw):
    model = model or Net(**kw)
    trainer = quiet_trainer(tmp_path, max_epochs=max_epochs, callbacks=callbacks)
    trainer.fit(model, DataLoader(data(), batch_size=8), ckpt_path=ckpt_path)
    if save:
        trainer.save_checkpoint(save)
    return model, trainer


def test_backbone_finetuning_resume_rebuilds_the_parameter_groups_exactly(tmp_path):
    def cb():  # (with an accumulation schedule that changes after the interruption)
        return [BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda e: 2.0),
                GradientAccumulationScheduler({3: 2})]

    full, t_full = fit(tmp_path / "a", cb(), 4)
    ckpt = str(tmp_path / "mid.ckpt")
    fit(tmp_path / "b", cb(), 2, save=ckpt)  # stops after the unfreeze: 2 parameter groups
    resumed, t_res = fit(tmp_path / "b", cb(), 4, ckpt_path=ckpt)
    assert t_res.global_step == t_full.global_step == 6 + 6 + 6 + 3
    assert len(t_res.optimizers[0].param_groups) == 2
    assert [g["lr"] for g in t_res.optimizers[0].param_groups] == [g["lr"] for g in t_full.optimizers[0].param_groups]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(p.requires_grad for p in resumed.backbone.parameters())


def test_backbone_finetuning_needs_a_backbone(tmp_path):
    class NoBackbone(Net):
        def __init__(self):
            super().__init__()
            self.body = self.backbone
            del self.backbone

        def forward(self, x):
            return self.head(self.body(x))

    with pytest.raises(ValueError, match="needs an nn.Module attribute `backbone`"):
        fit(tmp_path, [BackboneFinetuning()], 1, model=NoBackbone())


def test_swa_resume_inside_the_averaging_window_is_exact(tmp_path):
    def cb():
        return StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2, annealing_epochs=2)

    every_epoch = de.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_top_k=-1)
    full, _ = fit(tmp_path / "a", [cb(), every_epoch], 5)
    # as if the run had died after epoch 2 (in the window, with a SWA schedule and an average)
    mid = str(tmp_path / "ckpt" / "epoch=2-step=18.ckpt")
    resumed, _ = fit(tmp_path / "b", [cb()], 5, ckpt_path=mid)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_swa_recomputes_batchnorm_statistics_for_the_averaged_weights(tmp_path):
    model, _ = fit(tmp_path, [StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2)], 4, bn=True)
    bn = model.backbone[1]
    with torch.no_grad():
        pre = model.backbone[0](data().tensors[0])  # equal batches: the mean of batch means is the mean
    torch.testing.assert_close(bn.running_mean, pre.mean(0), rtol=1e-5, atol=1e-6)
    assert bn.momentum == 0.1  # update_bn puts the momentum back


def test_swa_counts_averaged_epochs_and_averages_an_endless_fit(tmp_path):
    counts = []

    class Counting(StochasticWeightAveraging):
        def on_train_epoch_end(self, trainer, module):
            counts.append(None if self.n_averaged is None else int(self.n_averaged))

    swa = Counting(swa_lrs=0.01, swa_epoch_start=2)
    model = Net(bn=True)
    trainer = quiet_trainer(tmp_path, max_epochs=-1, max_steps=30, callbacks=[swa])  # 6 batches an epoch
    trainer.fit(model, DataLoader(data(), batch_size=8))
    assert trainer.global_step == 30 and counts == [None, 1, 2, 3, 4]  # swa_epoch_start=2: from epoch index 1
    assert swa.swa_end == float("inf") and int(swa.n_averaged) == 4
    for avg, own in zip(swa._average_model.module.parameters(), model.parameters()):  # the average is the model's
        torch.testing.assert_close(avg, own)


def test_accumulation_schedule_counts_steps_and_refuses_a_second_setting(tmp_path):
    _, t = fit(tmp_path, [GradientAccumulationScheduler({1: 3})], 2)
    assert t.global_step == 6 + 2  # epoch 0: 6 batches, 6 steps; epoch 1: 3 + 3 batches, 2 steps
    with pytest.raises(ValueError, match="both set the accumulation"):
        quiet_trainer(tmp_path, max_epochs=1, accumulate_grad_batches=2,
                      callbacks=[GradientAccumulationScheduler({1: 3})]).fit(Net(), DataLoader(data(), batch_size=8))
    with pytest.raises(ValueError, match="factors must be integers >= 1"):
        GradientAccumulationScheduler({0: 0})


def test_lr_finder_callback_sets_the_rate_before_training(tmp_path):
    finder = LearningRateFinder(num_training_steps=12, early_stop_threshold=None)
    model = Net(lr=1.0)
    _, t = fit(tmp_path, [finder], 1, model=model)
    assert finder.optimal_lr is not None and model.lr == finder.optimal_lr.suggestion() != 1.0
    assert t.optimizers[0].param_groups[0]["lr"] == model.lr  # fit trained with the found rate


def test_batch_size_finder_callback_and_its_refusal_of_a_ready_loader(tmp_path):
    finder = BatchSizeFinder(steps_per_trial=1, init_val=4, max_trials=3)
    model = Net(batch_size=2)
    quiet_trainer(tmp_path, max_epochs=1, callbacks=[finder]).fit(model)
    assert finder.optimal_batch_size == model.batch_size == 16  # 4 -> 8 -> 16, three trials, all fit
    with pytest.raises(ValueError, match="without passing a DataLoader"):
        fit(tmp_path, [BatchSizeFinder()], 1)


def _two_rank_fits(rank):
    import distengine as de  # noqa: F811 - a fresh process

    def trainer(callbacks, epochs):
        return de.Trainer(accelerator="cpu", devices=2, max_epochs=epochs, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, callbacks=callbacks)

    swa = Net(bn=True)
    trainer([StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2)], 3).fit(swa, DataLoader(data(), batch_size=8))
    tuned = Net(lr=1.0)
    finder = LearningRateFinder(num_training_steps=10, early_stop_threshold=None)
    trainer([finder], 1).fit(tuned, DataLoader(data(), batch_size=8))
    return {k: v.clone() for k, v in swa.state_dict().items()}, tuned.lr, tuned.head.weight.detach().clone()


def test_swa_with_batchnorm_and_the_lr_finder_on_two_ranks_end_equal_on_both():
    (swa0, lr0, w0), (swa1, lr1, w1) = run_ranks(_two_rank_fits, 2)
    for k in swa0:  # BatchNorm statistics recomputed per shard, then averaged over the ranks
        assert torch.equal(swa0[k], swa1[k]), k
    assert lr0 == lr1 != 1.0
    assert torch.equal(w0, w1)
