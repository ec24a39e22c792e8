"""A second, independent gate: Lightning's own test suite run against distengine.

Lightning 2.6.5's tests (tests_pytorch/, with its demos/) are found through the environment
variable DISTENGINE_LIGHTNING_TESTS (default: <repo>/../shared/lightning-tests, then
<repo>/shared/lightning-tests); none of that code is kept in this repository. `record` runs the
chosen files under real pytorch-lightning and under distengine (through the conformance shim)
and stores per test id both outcomes and, for a distengine failure, its class (classify.py) in
expected.json; test_gate.py reruns on distengine the ids that passed on both sides.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SUPPORT = HERE / "support"
EXPECTED = HERE / "expected.json"
STATE = REPO / ".lightning_suite"  # ignored by git: the Lightning side's test packages, run logs
ENV_VAR = "DISTENGINE_LIGHTNING_TESTS"

# tests_pytorch/<file>; each is run whole on Lightning
FILES = [
    "models/test_hooks.py",
    "callbacks/test_early_stopping.py",
    "checkpointing/test_model_checkpoint.py",
    "callbacks/test_lr_monitor.py",
    "callbacks/test_finetuning_callback.py",
    "callbacks/test_stochastic_weight_avg.py",
    "loggers/test_csv.py",
    "loggers/test_tensorboard.py",
    "trainer/flags/test_barebones.py",
    "trainer/flags/test_check_val_every_n_epoch.py",
    "trainer/flags/test_env_vars.py",
    "trainer/flags/test_fast_dev_run.py",
    "trainer/flags/test_inference_mode.py",
    "trainer/flags/test_limit_batches.py",
    "trainer/flags/test_min_max_epochs.py",
    "trainer/flags/test_overfit_batches.py",
    "trainer/flags/test_val_check_interval.py",
    "trainer/logging_/test_train_loop_logging.py",
    "trainer/logging_/test_eval_loop_logging.py",
    "trainer/optimization/test_manual_optimization.py",
    "trainer/test_dataloaders.py",
    "tuner/test_lr_finder.py",
    "core/test_lightning_module.py",
    "core/test_lightning_optimizer.py",
    "trainer/test_trainer.py",
    "callbacks/test_lambda_function.py",
    "callbacks/test_callbacks.py",
]

# tests left out on both sides (fnmatch on the test id): multi-process runs (DDP / spawn on CPU
# start more processes than the gate may, and take minutes each on a loaded 2-core machine)
EXCLUDE = ["*ddp*", "*spawn*", "*sync_dist_true*"]


def suite_root() -> Path | None:
    """The folder holding tests_pytorch/ and demos/, or None when it is not on this machine."""
    if os.environ.get(ENV_VAR):
        candidates = [Path(os.environ[ENV_VAR])]
    else:
        candidates = [REPO.parent / "shared" / "lightning-tests", REPO / "shared" / "lightning-tests"]
    for path in candidates:
        if (path / "tests_pytorch").is_dir() and (path / "demos").is_dir():
            return path
    return None
