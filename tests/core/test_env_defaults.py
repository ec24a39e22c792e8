"""PL_TRAINER_* environment variables give Trainer defaults, as in Lightning (issue 26; the
conformance probe env_defaults compares a fit with Lightning 2.6.6)."""
from __future__ import annotations

import distengine as de
from distengine.utilities.argparse import parse_env_variables


def test_env_gives_defaults_and_arguments_win(monkeypatch, tmp_path):
    monkeypatch.setenv("PL_TRAINER_MAX_EPOCHS", "3")
    monkeypatch.setenv("PL_TRAINER_LIMIT_VAL_BATCHES", "0.25")
    monkeypatch.setenv("PL_TRAINER_ACCELERATOR", "cpu")  # not a literal: the string
    monkeypatch.setenv("PL_TRAINER_NUM_SANITY_VAL_STEPS", "")  # empty: ignored
    monkeypatch.setenv("PL_TRAINER_NO_SUCH_FLAG", "1")
    t = de.Trainer(default_root_dir=str(tmp_path), logger=False)
    assert (t.max_epochs, t.limits["val"], t.accelerator, t.num_sanity_val_steps) == (3, 0.25, "cpu", 2)
    assert de.Trainer(default_root_dir=str(tmp_path), logger=False, max_epochs=1).max_epochs == 1
    assert vars(parse_env_variables(de.Trainer)) == {"max_epochs": 3, "limit_val_batches": 0.25, "accelerator": "cpu"}


def test_a_subclass_reads_its_own_name(monkeypatch, tmp_path):
    class MyTrainer(de.Trainer):
        pass

    monkeypatch.setenv("PL_TRAINER_MAX_EPOCHS", "3")
    monkeypatch.setenv("PL_MYTRAINER_MAX_EPOCHS", "7")
    assert MyTrainer(default_root_dir=str(tmp_path), logger=False).max_epochs == 7
