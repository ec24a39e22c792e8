"""Declared differences: suite tests whose distengine failure is a documented choice.

Each entry is (test id, or an fnmatch pattern, class, reason): an id is matched exactly first, so
parametrized ids such as ``test_x[1]`` need no escaping. A pattern ``"cause:<pattern>"`` matches
the cause of a failure of that class instead (used for class-B names declared out of scope).
The class replaces the automatic one (classify.py); the reason is printed in the table and
stored in expected.json. Keep the reason to one line that says what distengine does instead and why.
"""
_LAST_JSON = ("distengine's ModelCheckpoint also writes <dirpath>/last.json, the pointer to the newest checkpoint "
              "that resume and Slurm requeue follow (a documented choice), so a listing of dirpath has one more file")

_MC = "tests_pytorch/checkpointing/test_model_checkpoint.py::"
_ES = "tests_pytorch/callbacks/test_early_stopping.py::"
_CSV = "tests_pytorch/loggers/test_csv.py::"
_CSV_NOW = ("distengine's CSVLogger writes each row to metrics.csv when log_metrics returns (nothing buffered, a crash "
            "loses no rows), so flush_logs_every_n_steps has no effect and no save() is called to flush")
_WORDING = "messages are distengine's own wording; same exception type and moment"

_STRATEGY_API = ("out of scope: Lightning's Strategy plugin interface (connect, backward, launcher, "
                 "setup_optimizers, Strategy(device=)), which these tests patch to observe calls; distengine's "
                 "strategies have their own interface (docs/api.md), users pick them by name or class")
_INTERNALS = ("out of scope: Lightning's loop and connector internals (trainer.fit_loop.done, "
              "total_batch_idx, trainer.connectors, patched private module attributes)")
_FABRIC = "out of scope: Lightning Fabric is a separate product; distengine offers the Trainer only"
_ACCELERATORS = ("out of scope: Accelerator objects (CPUAccelerator, CUDAAccelerator); distengine takes "
                 "accelerator= as a name ('cpu', 'gpu', 'cuda', 'auto') and trainer.strategy.root_device "
                 "tells the device")

OUT_OF_SCOPE_B: list[tuple[str, str, str]] = [
    ("cause:attribute *Strategy.connect", "B", _STRATEGY_API),
    ("cause:attribute *Strategy.backward", "B", _STRATEGY_API),
    ("cause:attribute *Strategy.launcher", "B", _STRATEGY_API),
    ("cause:attribute *Strategy.setup_optimizers", "B", _STRATEGY_API),
    ("cause:keyword Strategy.__init__(device=)", "B", _STRATEGY_API),
    ("cause:attribute strategies.strategy", "B", _STRATEGY_API),
    ("cause:attribute FitLoopLimits.*", "B", _INTERNALS),
    ("cause:attribute loops", "B", _INTERNALS),
    ("cause:attribute trainer.connectors", "B", _INTERNALS),
    ("cause:attribute module.time", "B", _INTERNALS),
    ("cause:module utilities.imports", "B", _INTERNALS),
    ("cause:import Fabric", "B", _FABRIC),
    ("cause:attribute BoringModel.fabric", "B", _FABRIC),
    ("cause:module accelerators", "B", _ACCELERATORS),
    ("cause:attribute callbacks.early_stopping.log", "B",
     "out of scope: the tests patch the module's logging logger and call the private EarlyStopping._log_info; "
     "distengine's EarlyStopping(verbose=True) prints its lines to stderr (rank-prefixed; rank zero only with "
     "log_rank_zero_only), as its other notices, tests/callbacks/test_early_stopping.py"),
]
_TT = "tests_pytorch/trainer/test_trainer.py::"
_LAST_IS_NEWEST = ("ckpt_path='last' loads the checkpoint <dirpath>/last.json points at, the newest one written "
                   "(so resume and Slurm requeue work without save_last=True; a documented choice), not only a "
                   "file named last.ckpt (with save_last it is last.ckpt, as in Lightning)")
_MANUAL = "trainer/optimization/test_manual_optimization.py"
_CKPT_DICT = ("the checkpoint dictionary handed to on_save_checkpoint / on_load_checkpoint is distengine's format "
              "(format_version, progress, data, rng...: what exact mid-epoch resume needs; no 'loops' or "
              "'pytorch-lightning_version' key) and the test compares it key for key")
_RESUME_ORDER = ("on resume distengine builds the optimizers (configure_optimizers) before on_load_checkpoint and "
                 "calls a callback's load_state_dict before its on_load_checkpoint: a sharded checkpoint is read into "
                 "the built optimizers' layout, and the finetuning callbacks rebuild their parameter groups on them "
                 "before the optimizer state is loaded")


def _glob(test: str) -> str:
    """``test`` as an fnmatch pattern: ``[`` stands for itself (``[*]``: any parameters)."""
    return test.replace("[", "[[]")


OVERRIDES: list[tuple[str, str, str]] = [
    (_MC + "test_check_val_every_n_epochs_top_k_integration", "C", _LAST_JSON),
    (_MC + "test_checkpoint_repeated_strategy", "C", _LAST_JSON),
    (_MC + "test_checkpoint_repeated_strategy_extended", "C", _LAST_JSON),
    (_MC + "test_ckpt_every_n_train_steps", "C", _LAST_JSON),
    (_MC + "test_model_checkpoint_every_n_epochs[1]", "C", _LAST_JSON),
    (_MC + "test_model_checkpoint_every_n_epochs[2]", "C", _LAST_JSON),
    (_MC + "test_model_checkpoint_every_n_epochs[3]", "C", _LAST_JSON),
    (_MC + "test_model_checkpoint_file_extension", "C", _LAST_JSON),
    (_MC + "test_model_checkpoint_topk_all", "C", _LAST_JSON),
    (_MC + "test_model_checkpoint_topk_zero", "C", _LAST_JSON),
    (_MC + "test_none_monitor_not_alternating", "C", _LAST_JSON),
    (_MC + "test_resume_and_old_checkpoint_files_remain[False]", "C", _LAST_JSON),
    (_MC + "test_resume_and_old_checkpoint_files_remain[True]", "C", _LAST_JSON),
    (_MC + "test_resume_training_preserves_old_ckpt_last", "C", _LAST_JSON),
    (_MC + "test_save_last_versioning", "C", _LAST_JSON),
    (_MC + "test_val_check_interval_checkpoint_files", "C", _LAST_JSON),
    ("tests_pytorch/loggers/test_tensorboard.py::test_tensorboard_hparams_reload", "C", _LAST_JSON),
    (_MC + "test_ckpt_version_after_rerun_new_trainer", "C", _LAST_JSON),
    (_MC + "test_model_checkpoint_with_non_string_input[-1]", "C", _LAST_JSON),
    (_MC + "test_current_score", "C", _LAST_JSON + " (the test torch.loads every file of dirpath, last.json too)"),
    (_MC + "test_configure_model_checkpoint", "C", _WORDING),
    (_MC + "test_invalid_every_n_epochs", "C", _WORDING),
    (_MC + "test_invalid_every_n_train_steps", "C", _WORDING),
    (_MC + "test_invalid_top_k", "C", _WORDING),
    (_MC + "test_invalid_trigger_combination", "C", _WORDING),
    (_MC + "test_model_checkpoint_mode_options", "C", _WORDING),
    (_ES + "test_early_stopping_mode_options", "C", _WORDING),
    (_MC + "test_none_monitor_top_k", "C",
     "distengine accepts ModelCheckpoint(monitor=None, save_top_k=k>1) and keeps the k newest checkpoints "
     "(with no monitor the newest counts as the best), a documented extension where Lightning refuses the setting"),
    (_CSV + "test_flush_n_steps", "C", _CSV_NOW),
    (_CSV + "test_metrics_reset_after_save", "C", _CSV_NOW),
    (_CSV + "test_manual_versioning_file_exists", "C",
     "distengine's CSVLogger appends to an existing version folder's metrics.csv (a rerun or resume with the same "
     "version continues its log, tests/loggers/test_csv.py) instead of warning and deleting the old file"),
    ("tests_pytorch/callbacks/test_stochastic_weight_avg.py::test_swa_raises", "C", _WORDING),
    ("tests_pytorch/callbacks/test_stochastic_weight_avg.py::test_swa_warns", "C", _WORDING),
    ("tests_pytorch/callbacks/test_stochastic_weight_avg.py::test_swa_deepcopy", "A",
     "reads the private _average_model as Lightning builds it (a copy of the LightningModule made in setup); "
     "distengine's is a torch AveragedModel made at fit start"),
    ("tests_pytorch/callbacks/test_lr_monitor.py::test_lr_monitor_no_logger", "C", _WORDING),
    ("tests_pytorch/callbacks/test_lr_monitor.py::test_lr_monitor_duplicate_custom_pg_names", "C", _WORDING),
    ("tests_pytorch/callbacks/test_finetuning_callback.py::test_finetuning_callback_warning", "C", _WORDING),
    ("tests_pytorch/callbacks/test_finetuning_callback.py::test_unfreeze_and_add_param_group_function", "C",
     _WORDING),
    ("tests_pytorch/loggers/test_tensorboard.py::test_tensorboard_log_graph_warning_no_example_input_array", "C",
     _WORDING),
    (_MC + "test_ckpt_metric_names", "C",
     "a checkpoint filename field naming a metric that was never logged is written as nan (val_loss=nan.ckpt), not "
     "as 0, so a missing metric is not mistaken for a real score of 0 (documented in format_checkpoint_name)"),
    (_MC + "test_model_checkpoint_saveload_ckpt", "C", _WORDING),
    ("tests_pytorch/callbacks/test_callbacks.py::test_resume_incomplete_callbacks_list_warning", "C", _WORDING),
    (_ES + "test_resume_early_stopping_from_checkpoint", "C", _WORDING),
    (_MC + "test_model_checkpoint_save_last_none_monitor", "C",
     "with monitor=None distengine scores each checkpoint by its global step (the newest is the best, which is what "
     "lets save_top_k=k keep the k newest), so best_model_score and best_k_models hold those steps; Lightning "
     "leaves them None and empty"),
    (_MC + "test_model_checkpoint_no_extraneous_invocations", "C",
     "distengine builds a checkpoint's contents on global rank zero only (the other ranks join only the collective "
     "parts), so a callback's state_dict runs on rank zero; Lightning calls it on every rank and drops the result"),
    (_MC + "test_model_checkpoint_save_last_as_link_not_local", "C",
     "distengine's ModelCheckpoint writes local files only and refuses a remote URL dirpath when it is built "
     "(ConfigError, a ValueError), for every save_last setting; Lightning takes fsspec URLs and refuses only "
     "save_last='link' on them, at setup"),
    (_MC + "test_ckpt_version_after_rerun_same_trainer", "C", _LAST_JSON),
    (_MC + "test_ckpt_version_counter_disabled_after_rerun_new_trainer", "C", _LAST_JSON),
    (_MC + "test_default_checkpoint_behavior", "C", _LAST_JSON),
    # trainer/ flags and checkpoint paths (branch c-trainer)
    *[(_TT + name, "C", _WORDING) for name in (
        "test_invalid_gradient_clip_algo", "test_invalid_gradient_clip_value",
        "test_trainer_error_when_input_not_lightning_module", "test_trainer_subclassing",
        "test_trainer_save_checkpoint_no_model_attached", "test_exception_when_lightning_module_is_not_set_on_trainer*",
        "test_trainer_max_steps_and_epochs_validation*", "test_check_val_every_n_epoch_exception",
        "test_checkpoint_path_input[[]*-0-best]", "test_tested_checkpoint_path_best[[]*-False]",
        "test_checkpoint_path_input_last[[]fit-*-last]")],
    ("tests_pytorch/trainer/flags/test_val_check_interval.py::"
     "test_val_check_interval_float_with_none_check_val_every_n_epoch", "C", _WORDING),
    ("tests_pytorch/trainer/flags/test_fast_dev_run.py::test_skip_on_fast_dev_run_tuner", "C", _WORDING),
    (_TT + "test_checkpoint_path_input[[]*-1-specific]", "C", _LAST_JSON),
    (_TT + "test_checkpoint_path_input_last[[]validate-False-last]", "C", _LAST_IS_NEWEST),
    *[(_TT + name, "A", "the test calls trainer._checkpoint_connector._parse_ckpt_path, a Lightning internal (the "
      "AttributeError is raised inside its pytest.warns block)") for name in (
        "test_best_ckpt_evaluate_raises_warning_with_multiple_ckpt_callbacks",
        "test_checkpoint_path_input_last_fault_tolerant*",
        "test_exception_when_testing_or_validating_with_fast_dev_run")],
    (_TT + "test_keyboard_interrupt", "A", "after the SystemExit(1) (which distengine gives too) the test asserts "
     "kill(9) on a Mock of Lightning's _SubprocessScriptLauncher set as trainer.strategy._launcher, a Lightning "
     "internal; distengine's launcher ends the other ranks itself when one exits non-zero (docs/launching.md)"),
    (_TT + "test_trainer_predict_no_return", "A", "the test's helper reads trainer.strategy.launcher and "
     "_MultiProcessingLauncher, Lightning internals (raised inside its pytest.warns block)"),
    *[(_TT + f"test_fit_ckpt_path_epoch_restored[[]{v}]", "A", "the test file imports the private "
       "lightning_fabric.utilities.cloud_io._load (as pl_load), which this test calls") for v in ("False", "True")],
    ("tests_pytorch/trainer/logging_/test_eval_loop_logging.py::test_log_works_in_test_callback", "A",
     "reads trainer._results.dataloader_idx, Lightning's private logger-connector results; distengine's "
     "trainer._results is another private object"),
    *[(f"tests_pytorch/trainer/logging_/test_eval_loop_logging.py::{t}", "A", "indexes trainer._results "
       "(Lightning's private logger-connector results, e.g. ['validation_step.val_loss.0'].cumulated_batch_size); "
       "distengine's trainer._results is another private object") for t in (
        "test_multiple_dataloaders_reset[[]0.5]", "test_multiple_dataloaders_reset[[]1.0]",
        "test_on_epoch_logging_with_sum_and_on_batch_start")],
    ("tests_pytorch/trainer/logging_/test_train_loop_logging.py::test_unsqueezed_tensor_logging", "A",
     "sets trainer.state.stage and the private model._current_fx_name to call self.log outside a running loop "
     "(distengine's self.log outside a run does nothing; a one-element tensor logged in a run is a scalar)"),
    (_CSV + "test_csv_logger_remotefs", "C", "distengine's CSVLogger writes local files only, appending each row "
     "as it is logged (no buffered rows to lose); a remote URL (memory://, s3://) is refused with one line when the "
     "logger is built, instead of a rewrite of the whole file through fsspec at each save"),
    (_TT + "test_detect_anomaly_nan", "C", "distengine checks the loss before backward by default "
     "(Trainer(on_nonfinite_loss='error'), a documented flag) and stops with a FloatingPointError naming the step and "
     "rank, so torch's anomaly mode never reaches the NaN in backward"),
    # when dataloaders load, overfit_batches samplers (branch load-order)
    ("tests_pytorch/models/test_hooks.py::test_trainer_model_hook_system_fit[[]*]", "C",
     _CKPT_DICT + "; the hook order is Lightning's"),
    *[("tests_pytorch/models/test_hooks.py::test_trainer_model_hook_system_fit_no_val_and_resume_" + v, "C",
       _CKPT_DICT + "; " + _RESUME_ORDER) for v in ("max_epochs", "max_steps")],
    ("tests_pytorch/trainer/test_dataloaders.py::test_train_dataloader_passed_to_fit", "C",
     "distengine rebuilds a training DataLoader with a standard sampler on its ResumableSampler (the same order: "
     "SequentialSampler's, or RandomSampler's draw) so that a mid-epoch resume starts at the exact sample without "
     "reading the batches before it; trainer.train_dataloader is that rebuilt loader, not the object given to fit"),
    ("tests_pytorch/trainer/flags/test_overfit_batches.py::"
     "test_overfit_batches_raises_warning_in_case_of_sequential_sampler", "C", _WORDING),
    # messages are distengine's own wording (c-loops): same exception type, raised at the same moment
    *((f"tests_pytorch/{f}::{_glob(t)}", "C", _WORDING) for f, t in [
        ("trainer/logging_/test_train_loop_logging.py", "test_log_invalid_raises[*]"),
        ("trainer/logging_/test_train_loop_logging.py", "test_log_works_in_train_callback"),
        ("trainer/logging_/test_eval_loop_logging.py", "test_log_works_in_val_callback"),
        ("trainer/test_dataloaders.py", "test_dataloader_config_errors_init[*]"),
        ("trainer/test_dataloaders.py", "test_inf_dataloader_raise_error_with_partial_batch_limits[*]"),
        ("trainer/test_dataloaders.py", "test_dataloaders_load_every_n_epochs_exception[*]"),
        ("trainer/test_dataloaders.py", "test_fit_multiple_train_loaders[sequential-128]"),
        ("trainer/test_dataloaders.py", "test_dataloaders_with_fast_dev_run[-1]"),
        ("trainer/test_dataloaders.py", "test_dataloader_config_errors_runtime[*]"),
        ("trainer/flags/test_val_check_interval.py", "test_validation_check_interval_exceed_data_length_wrong"),
        ("tuner/test_lr_finder.py", "test_lr_finder_fails_fast_on_bad_config"),
        (_MANUAL, "test_lr_schedulers_reduce_lr_on_plateau[True]"),
        (_MANUAL, "test_manual_optimization_with_non_pytorch_scheduler[True]"),
        ("core/test_lightning_module.py",
         "test_lightning_module_configure_gradient_clipping_different_argument_values"),
        ("core/test_lightning_module.py", "test_trainer_reference_recursively"),
        ("trainer/logging_/test_train_loop_logging.py", "test_logging_raises"),
        ("trainer/test_dataloaders.py", "test_warning_with_iterable_dataset_and_len"),
    ]),
]
# branch c-rest
OVERRIDES += [
    (_TT + "test_trainer_min_steps_and_min_epochs_not_reached", "C",
     "the same steps run and should_stop reads the same; distengine logs the 'stop waits for min_epochs/min_steps' "
     "notice once at INFO in its own words on its own 'distengine' logger (tests/core/test_flags.py), the test "
     "counts Lightning's sentence"),
    (_TT + "test_train_loop_system", "C",
     "automatic optimization runs training_step and backward in the loop, then optimizer.step() without a closure "
     "(a closure only when the module overrides optimizer_step, or for LBFGS), and zeroes the gradients right after "
     "the step, freeing them before validation and the next forward (docs/lightning.md, Differences); the training "
     "is the same, an optimizer subclass sees step after backward instead of before training_step"),
]
OVERRIDES += OUT_OF_SCOPE_B
