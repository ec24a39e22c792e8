"""ModelPruning's argument checks: one clear error each (its pruning itself is compared with
Lightning 2.6.6 by the conformance scripts pruning_*.py)."""
import pytest
import torch
from torch import nn

from distengine.callbacks import ModelPruning


@pytest.mark.parametrize("kwargs,error,match", [
    ({"pruning_fn": "l3_magic"}, ValueError, "pruning_fn='l3_magic'.*l1_unstructured"),
    ({"pruning_fn": "ln_structured", "use_global_unstructured": False}, ValueError, "needs pruning_dim"),
    ({"pruning_fn": "ln_structured", "use_global_unstructured": False, "pruning_dim": 0}, ValueError, "pruning_norm"),
    ({"pruning_fn": "random_structured", "pruning_dim": 0}, ValueError, "needs an unstructured method"),
    ({"pruning_fn": torch.nn.utils.prune.L1Unstructured(0.5)}, TypeError, "the class, not an instance"),
    ({"pruning_fn": "l1_unstructured", "amount": "half"}, TypeError, "amount='half'"),
    ({"pruning_fn": "l1_unstructured", "verbose": 3}, ValueError, "verbose=3"),
    ({"pruning_fn": "l1_unstructured", "parameter_names": ["gamma"]}, ValueError, "'weight' and/or 'bias'"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ModelPruning(**kwargs)


def test_parameters_not_in_the_model_are_named():
    model = nn.Sequential(nn.Linear(2, 2))
    stray = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="not in the model"):
        ModelPruning.sanitize_parameters_to_prune(model, [(stray, "weight")])
    with pytest.raises(TypeError, match="list of \\(nn.Module, parameter_name\\) pairs"):
        ModelPruning.sanitize_parameters_to_prune(model, [model[0]])
    assert ModelPruning.sanitize_parameters_to_prune(model, (), ["bias"]) == [(model[0], "bias")]


def test_make_pruning_permanent_folds_the_masks():
    model = nn.Sequential(nn.Linear(4, 4))
    cb = ModelPruning("l1_unstructured", amount=0.5)
    cb.setup(None, model, "fit")
    cb.apply_pruning(0.5)
    assert {"0.weight_orig", "0.weight_mask", "0.bias_orig", "0.bias_mask"} <= set(model.state_dict())
    cb.make_pruning_permanent(model)
    assert set(model.state_dict()) == {"0.weight", "0.bias"}
    assert int((model[0].weight == 0).sum()) + int((model[0].bias == 0).sum()) == 10
