"""A resumed run goes on in its own ``version_N`` folder (issue: every resume warned in two lines,
with a source location, that the checkpoint folder changed from ``version_0`` to ``version_1``, and
wrote its logs and checkpoints into a new ``version_1``: its TensorBoard curves split in two).

Now ``fit(ckpt_path="last")`` (or a path inside ``<logger dir>/version_N/checkpoints/``) moves the
loggers whose version was not given and the ModelCheckpoint whose dirpath was not given into
``version_N``, decided on rank 0 for every rank; the event files of the resumed run sit next to
the first run's, and TensorBoard reads them as one curve. A version or dirpath the user gave is
kept, and the resume's one line on stderr says where the run writes.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os

import torch

from tests.helpers import run_ranks


def _module():
    import distengine as de

    class Net(de.Module):
        def __init__(self, width: int = 4) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(width, 1)

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Net()


def _loader():
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=8)


def _trainer(max_epochs: int, root: str, version=None, dirpath=None):
    import distengine as de
    from distengine.callbacks.model_checkpoint import ModelCheckpoint
    from distengine.loggers import CSVLogger, TensorBoardLogger

    loggers = [TensorBoardLogger(root, name="exp", version=version), CSVLogger(root, name="exp", version=version)]
    return de.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=loggers, log_every_n_steps=1,
                      callbacks=[ModelCheckpoint(dirpath=dirpath)], enable_progress_bar=False,
                      enable_model_summary=False)


def _fit_then_resume(rank: int, root: str, version=None, dirpath=None) -> dict:
    """A 1-epoch fit, then a 2-epoch fit resumed with ckpt_path="last" (its stderr captured)."""
    import distengine as de

    de.seed_everything(1)
    _trainer(1, root, dirpath=dirpath).fit(_module(), _loader())
    second = _trainer(2, root, version, dirpath)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        second.fit(_module(), _loader(), ckpt_path="last")
    return {"log_dir": second.log_dir, "dirpath": second.checkpoint_callback.dirpath,
            "loggers": [lg.log_dir for lg in second.loggers], "err": err.getvalue(), "step": second.global_step}


def _scalars(folder: str, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(folder)
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_resume_on_two_ranks_continues_in_its_own_version_folder(tmp_path):
    root = str(tmp_path)
    found = run_ranks(_fit_then_resume, 2, root, timeout=120)
    own = os.path.join(root, "exp", "version_0")
    for rank, out in enumerate(found):
        assert out["step"] == 8, out
        assert out["log_dir"] == own and out["loggers"] == [own, own], (rank, out)
        assert out["dirpath"] == os.path.join(own, "checkpoints"), (rank, out)
    assert sorted(os.listdir(os.path.join(root, "exp"))) == ["version_0"]  # no empty version_1 left
    lines = found[0]["err"].strip().splitlines()
    assert len(lines) == 1 and "Warning" not in lines[0] and ".py:" not in lines[0], lines
    assert lines[0].startswith("distengine: resumed from ") and f"continuing in its own folder {own}" in lines[0]
    assert found[1]["err"].strip() == ""
    # two event files, one curve: steps 0-3 from the first run, 4-7 from the resumed one, each once
    assert len([n for n in os.listdir(own) if n.startswith("events.out.tfevents")]) == 2
    assert _scalars(own, "loss") == list(range(8))
    assert _scalars(own, "hp_metric") == [0]
    with open(os.path.join(own, "metrics.csv"), newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f) if r["loss"]] == list(range(8))
    assert sorted(os.listdir(os.path.join(own, "checkpoints"))) == ["epoch=1-step=8.ckpt", "last.json"]


def test_a_given_version_is_kept_and_the_resume_line_says_where_the_run_writes(tmp_path):
    out = _fit_then_resume(0, str(tmp_path), version=3)
    mine = os.path.join(str(tmp_path), "exp", "version_3")
    assert out["log_dir"] == mine and out["dirpath"] == os.path.join(mine, "checkpoints")
    [line] = out["err"].strip().splitlines()
    was = os.path.join(str(tmp_path), "exp", "version_0", "checkpoints")
    assert line.endswith(f"; logs go to {mine}, checkpoints to {mine}/checkpoints (not {was}, where that "
                         "checkpoint was saved: best-k tracking starts afresh)"), line


def test_a_given_dirpath_is_kept_and_the_logs_get_a_new_version(tmp_path):
    ckpts = os.path.join(str(tmp_path), "ckpts")
    out = _fit_then_resume(0, str(tmp_path), dirpath=ckpts)
    new = os.path.join(str(tmp_path), "exp", "version_1")
    assert out["log_dir"] == new and out["dirpath"] == ckpts
    [line] = out["err"].strip().splitlines()
    assert line.endswith(f"; logs go to {new}, checkpoints to {ckpts}"), line
