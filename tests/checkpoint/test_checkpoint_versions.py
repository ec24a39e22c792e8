"""ModelCheckpoint in real fits: a second run into the same folder never overwrites the first
run's files (``-v1`` names, as Lightning 2.6.6), a resumed run replaces only its own, save_last
writes last.ckpt where Lightning does. The file lists were taken from Lightning 2.6.6 running
the same fits."""
from __future__ import annotations

import hashlib
import os

import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.callbacks.model_checkpoint import ModelCheckpoint
from distengine.checkpoint.io import read_last_pointer, safe_load
from tests.helpers import run_ranks


class Tiny(de.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.lin(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    return DataLoader(TensorDataset(torch.randn(8, 4, generator=torch.Generator().manual_seed(0))), batch_size=4)


def _fit(folder, epochs, ckpt_path=None, **kwargs):
    cb = ModelCheckpoint(dirpath=folder, **{"filename": "{epoch}", "save_last": True, **kwargs})
    trainer = de.Trainer(accelerator="cpu", max_epochs=epochs, callbacks=[cb], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(folder))
    trainer.fit(Tiny(), _loader(), ckpt_path=ckpt_path)
    return cb


def _files(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".ckpt"))


def _digests(folder):
    return {f: hashlib.sha256(open(os.path.join(folder, f), "rb").read()).hexdigest() for f in _files(folder)}


def test_a_second_run_into_the_same_folder_gets_versioned_names(tmp_path):
    _fit(tmp_path, 1)
    first = _digests(tmp_path)
    assert sorted(first) == ["epoch=0.ckpt", "last.ckpt"]
    cb = _fit(tmp_path, 1)
    # Lightning 2.6.6: ['epoch=0-v1.ckpt', 'epoch=0.ckpt', 'last-v1.ckpt', 'last.ckpt']
    assert _files(tmp_path) == ["epoch=0-v1.ckpt", "epoch=0.ckpt", "last-v1.ckpt", "last.ckpt"]
    assert {f: d for f, d in _digests(tmp_path).items() if f in first} == first  # untouched
    assert os.path.basename(cb.best_model_path) == "epoch=0-v1.ckpt"
    assert read_last_pointer(str(tmp_path)) == cb.best_model_path
    assert os.path.samefile(tmp_path / "last-v1.ckpt", cb.best_model_path)
    # a third run: -v2 (the counter goes on, nothing is reused)
    _fit(tmp_path, 1)
    assert "epoch=0-v2.ckpt" in _files(tmp_path) and "last-v2.ckpt" in _files(tmp_path)


def test_a_resumed_run_replaces_only_what_the_run_it_resumes_wrote(tmp_path):
    _fit(tmp_path, 1)
    _fit(tmp_path, 1)  # another run: epoch=0-v1, last-v1
    other = {f: d for f, d in _digests(tmp_path).items() if "-v1" in f}
    cb = _fit(tmp_path, 2, ckpt_path=str(tmp_path / "last.ckpt"))
    # Lightning 2.6.6: ['epoch=0-v1.ckpt', 'epoch=1.ckpt', 'last-v1.ckpt', 'last.ckpt']: the resumed
    # run's own last.ckpt is replaced and its superseded epoch=0.ckpt removed; the other run's stay
    assert _files(tmp_path) == ["epoch=0-v1.ckpt", "epoch=1.ckpt", "last-v1.ckpt", "last.ckpt"]
    assert {f: d for f, d in _digests(tmp_path).items() if "-v1" in f} == other
    assert os.path.samefile(tmp_path / "last.ckpt", tmp_path / "epoch=1.ckpt")
    assert safe_load(cb.best_model_path)["global_step"] == 4


def test_enable_version_counter_false_overwrites(tmp_path):
    _fit(tmp_path, 1, enable_version_counter=False)
    _fit(tmp_path, 1, enable_version_counter=False)
    assert _files(tmp_path) == ["epoch=0.ckpt", "last.ckpt"]


def test_save_last_without_a_trigger_that_fires(tmp_path):
    # no validation loop and saving after validation: Lightning writes last.ckpt at the end
    cb = _fit(tmp_path / "a", 2, filename=None, save_on_train_epoch_end=False)
    assert _files(tmp_path / "a") == ["last.ckpt"]
    assert safe_load(tmp_path / "a" / "last.ckpt")["global_step"] == 4
    assert cb.best_model_path == ""
    # save_top_k=0: only last.ckpt, a file of its own
    _fit(tmp_path / "b", 2, filename=None, save_top_k=0)
    assert _files(tmp_path / "b") == ["last.ckpt"]
    assert not os.path.islink(tmp_path / "b" / "last.ckpt")
    assert safe_load(tmp_path / "b" / "last.ckpt")["global_step"] == 4


def test_save_last_link_is_a_relative_symlink(tmp_path):
    _fit(tmp_path, 2, filename=None, save_last="link")
    # Lightning 2.6.6: [('epoch=1-step=4.ckpt', False), ('last.ckpt', 'epoch=1-step=4.ckpt')]
    assert _files(tmp_path) == ["epoch=1-step=4.ckpt", "last.ckpt"]
    assert os.readlink(tmp_path / "last.ckpt") == "epoch=1-step=4.ckpt"
    _fit(tmp_path / "z", 2, filename=None, save_last="link", save_top_k=0)
    assert _files(tmp_path / "z") == ["last.ckpt"] and not os.path.islink(tmp_path / "z" / "last.ckpt")


def _rank_second_run(rank, folder):
    torch.set_num_threads(1)
    cb = _fit(folder, 1)
    return os.path.basename(cb.best_model_path), os.path.basename(cb._last_link_path), _files(folder)


def test_two_ranks_agree_on_the_versioned_names(tmp_path):
    _fit(tmp_path, 1)
    results = run_ranks(_rank_second_run, 2, str(tmp_path), timeout=120)
    assert [r[:2] for r in results] == [("epoch=0-v1.ckpt", "last-v1.ckpt")] * 2
    assert results[0][2] == ["epoch=0-v1.ckpt", "epoch=0.ckpt", "last-v1.ckpt", "last.ckpt"]


def test_resuming_a_checkpoint_from_before_last_link_path_reuses_its_last_ckpt(tmp_path):
    cb = _fit(tmp_path, 1)
    ckpt = torch.load(cb.best_model_path, weights_only=False)
    del ckpt["callbacks"][cb.state_key]["last_link_path"]  # as an earlier distengine wrote it
    torch.save(ckpt, cb.best_model_path)
    _fit(tmp_path, 2, ckpt_path=cb.best_model_path)
    # its last.ckpt, replaced: no last-v1; the file it resumed from stays (Lightning: never deleted)
    assert _files(tmp_path) == ["epoch=0.ckpt", "epoch=1.ckpt", "last.ckpt"]


def test_resuming_an_older_checkpoint_keeps_the_newer_last_ckpt(tmp_path):
    _fit(tmp_path, 2, save_top_k=-1)
    newer = _digests(tmp_path)
    _fit(tmp_path, 3, save_top_k=-1, ckpt_path=str(tmp_path / "epoch=0.ckpt"))
    # Lightning 2.6.6: the resumed branch writes epoch=1-v1 (epoch=1.ckpt is the first branch's) and
    # last-v1; last.ckpt keeps the first branch's newer state
    assert _files(tmp_path) == ["epoch=0.ckpt", "epoch=1-v1.ckpt", "epoch=1.ckpt", "epoch=2.ckpt",
                                "last-v1.ckpt", "last.ckpt"]
    assert {f: d for f, d in _digests(tmp_path).items() if f in newer} == newer
    _fit(tmp_path, 4, save_top_k=-1, ckpt_path=str(tmp_path / "last.ckpt"))  # its own last.ckpt: replaced
    assert _files(tmp_path) == ["epoch=0.ckpt", "epoch=1-v1.ckpt", "epoch=1.ckpt", "epoch=2-v1.ckpt",
                                "epoch=2.ckpt", "epoch=3.ckpt", "last-v1.ckpt", "last.ckpt"]
    assert safe_load(tmp_path / "last.ckpt")["global_step"] == 8
