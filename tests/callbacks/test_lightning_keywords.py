"""Built-in callbacks take Lightning's hook keywords; ModelCheckpoint refuses a remote dirpath."""
from __future__ import annotations

import pytest

import distengine as de
from distengine.callbacks import (
    BackboneFinetuning,
    GradientAccumulationScheduler,
    ModelCheckpoint,
    StochasticWeightAveraging,
    ThroughputMonitor,
    TQDMProgressBar,
)
from distengine.utilities.exceptions import ConfigError
from tests.core.models import Regressor


@pytest.mark.parametrize("make", [
    lambda tmp: ModelCheckpoint(dirpath=tmp), lambda tmp: TQDMProgressBar(),
    lambda tmp: GradientAccumulationScheduler({0: 1}), lambda tmp: StochasticWeightAveraging(swa_lrs=0.1),
    lambda tmp: ThroughputMonitor(batch_size_fn=len), lambda tmp: BackboneFinetuning(),
])
def test_setup_takes_lightnings_keywords(tmp_path, make):
    cb = make(str(tmp_path))
    model = Regressor()
    if isinstance(cb, BackboneFinetuning):
        model.backbone = model.net
    cb.setup(trainer=de.Trainer(max_epochs=2, logger=False), pl_module=model, stage="fit")


def test_model_checkpoint_refuses_a_remote_url_and_reads_file_urls(tmp_path):
    with pytest.raises(ConfigError, match="remote URL"):
        ModelCheckpoint(dirpath="memory://not-a-filesystem-path", save_last="link")
    assert ModelCheckpoint(dirpath=f"file://{tmp_path}").dirpath == str(tmp_path)
