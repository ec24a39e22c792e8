"""``clip_gradients`` and the Trainer's clipping flags, as in Lightning 2.6: a value or an
algorithm given in both places must agree (an error before any step otherwise), one given in
either place is used."""
from __future__ import annotations

import pytest

import distengine as de
from distengine.utilities.exceptions import MisconfigurationException
from tests.core.models import Regressor, loader, regression_data


class Custom(Regressor):
    def __init__(self, **clip):
        super().__init__()
        self.clip, self.norms = clip, []

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.clip_gradients(optimizer, **self.clip)
        self.norms.append(max(p.grad.abs().max().item() for p in self.parameters()))


def _fit(model, **flags):
    trainer = de.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, **flags)
    trainer.fit(model, loader(regression_data()))
    return model


@pytest.mark.parametrize("clip, flags, names", [
    ({"gradient_clip_val": 1e-2}, {"gradient_clip_val": 1e-4}, "gradient_clip_val=0.01.*gradient_clip_val=0.0001"),
    ({"gradient_clip_algorithm": "value"}, {"gradient_clip_algorithm": "norm"},
     "gradient_clip_algorithm='value'.*gradient_clip_algorithm='norm'"),
])
def test_two_different_sources_are_an_error(clip, flags, names):
    with pytest.raises(MisconfigurationException, match=names):
        _fit(Custom(**clip), **flags)


def test_a_value_given_in_one_place_is_used():
    assert max(_fit(Custom(gradient_clip_val=1e-3, gradient_clip_algorithm="value")).norms) <= 1e-3 * (1 + 1e-6)
    assert max(_fit(Custom(gradient_clip_algorithm="value"), gradient_clip_val=1e-3).norms) <= 1e-3 * (1 + 1e-6)
    assert max(_fit(Custom(gradient_clip_val=1e-3), gradient_clip_val=1e-3,
                    gradient_clip_algorithm="value").norms) <= 1e-3 * (1 + 1e-6)
    with pytest.raises(ValueError, match="'norm' or 'value'"):
        _fit(Custom(gradient_clip_val=1.0, gradient_clip_algorithm="foo"))
