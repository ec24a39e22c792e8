"""LightningCLI: configs, subcommands, the saved config, one-line errors, a 2-rank launch.

In-process runs use tests/cli/models.py; the launch test runs tests/cli/train_cli.py (the
same model written against ``pytorch_lightning``) through the Lightning import shim.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import distengine as de
from distengine.cli import LightningCLI
from tests.cli.models import RegressionData, Regressor

ROOT = Path(__file__).resolve().parents[2]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def write(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


def csv_logger(tmp_path: Path, version: int | None = None) -> list[str]:
    args = ["--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(tmp_path / "logs")]
    return args + (["--trainer.logger.version", str(version)] if version is not None else [])


def cli(*args: str, **kwargs) -> LightningCLI:
    return LightningCLI(Regressor, RegressionData, args=list(args), **kwargs)


def test_fit_merges_two_configs_later_wins_and_trains_as_plain_code(tmp_path):
    base = write(tmp_path / "base.yaml", {"seed_everything": 7, "trainer": {"max_epochs": 3},
                                          "model": {"hidden_dim": 4, "lr": 0.05}})
    small = write(tmp_path / "small.yaml", {"trainer": {"max_epochs": 2}, "model": {"hidden_dim": 12}})
    run = cli("fit", "--config", base, "--config", small, "--data.batch_size", "16", *QUIET,
              "--trainer.enable_checkpointing", "false", *csv_logger(tmp_path))
    # the later file wins per key; keys only the first file sets stay; the command line adds
    assert run.trainer.max_epochs == 2 and run.trainer.global_step == 2 * 64 // 16
    assert run.model.hparams.hidden_dim == 12 and run.model.net[0].out_features == 12
    assert run.model.hparams.lr == 0.05 and run.datamodule.hparams.batch_size == 16

    de.seed_everything(7, workers=True)  # the same run written by hand
    model = Regressor(hidden_dim=12, lr=0.05)
    de.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(model, datamodule=RegressionData(batch_size=16))
    for name, value in model.state_dict().items():
        assert torch.equal(value, run.model.state_dict()[name]), name


def test_config_yaml_is_saved_in_the_log_dir_once(tmp_path):
    run = cli("fit", "--trainer.max_epochs", "1", "--model.hidden_dim", "5", "--seed_everything", "3", *QUIET,
              *csv_logger(tmp_path, version=0))
    saved = tmp_path / "logs" / "lightning_logs" / "version_0" / "config.yaml"
    assert run.trainer.log_dir == str(saved.parent)
    config = yaml.safe_load(saved.read_text())
    assert config["model"]["hidden_dim"] == 5 and config["trainer"]["max_epochs"] == 1
    assert config["seed_everything"] == 3 and config["trainer"]["logger"]["init_args"]["version"] == 0
    # the same log dir again: Lightning's rule, refuse before training unless overwrite is set
    with pytest.raises(RuntimeError, match=r"expected .*config\.yaml to NOT exist.*overwrite"):
        cli("fit", "--trainer.max_epochs", "1", *QUIET, *csv_logger(tmp_path, version=0))
    assert yaml.safe_load(saved.read_text())["model"]["hidden_dim"] == 5
    cli("fit", "--trainer.max_epochs", "1", "--model.hidden_dim", "6", *QUIET, *csv_logger(tmp_path, version=0),
        save_config_kwargs={"overwrite": True})
    assert yaml.safe_load(saved.read_text())["model"]["hidden_dim"] == 6


def test_print_config_prints_the_resolved_yaml_and_exits_0(tmp_path, capsys):
    config = write(tmp_path / "c.yaml", {"trainer": {"max_epochs": 4}, "model": {"hidden_dim": 9}})
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", "--config", config, "--model.lr", "0.2", "--optimizer", "Adam", "--print_config")
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert {"seed_everything", "trainer", "model", "data", "optimizer", "lr_scheduler", "ckpt_path"} <= set(printed)
    assert printed["trainer"]["max_epochs"] == 4 and printed["model"] == {"hidden_dim": 9, "lr": 0.2}
    assert printed["optimizer"]["class_path"] == "torch.optim.Adam"
    assert "max_epochs" in printed["trainer"] and "callbacks" in printed["trainer"]
    # the printed config is a complete config: given back, it prints itself
    with pytest.raises(SystemExit):
        cli("fit", "--config", write(tmp_path / "printed.yaml", printed), "--print_config")
    assert yaml.safe_load(capsys.readouterr().out) == printed


def test_validate_and_test_subcommands_use_the_checkpoint(tmp_path):
    seed = ["--seed_everything", "1", *QUIET, "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path)]
    fitted = cli("fit", "--trainer.max_epochs", "2", *seed, save_config_callback=None)
    ckpt = fitted.trainer.checkpoint_callback.best_model_path or fitted.trainer.checkpoint_callback.last_model_path
    assert Path(ckpt).is_file()
    x, y = _data()
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(fitted.model(x), y).item()
    for name, key in (("validate", "val_loss"), ("test", "test_loss")):
        run = cli(name, "--ckpt_path", ckpt, *seed, save_config_callback=None)
        assert run.subcommand == name and run.trainer.global_step == 0
        assert run.trainer.callback_metrics[key].item() == pytest.approx(expected, rel=1e-5)


def _data():
    dm = RegressionData()
    dm.setup("fit")
    return dm.dataset.tensors


def test_run_false_builds_the_objects_only():
    run = cli("--trainer.max_epochs", "4", "--model.hidden_dim", "3", "--seed_everything", "5",
              "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor", "val_loss",
              "--trainer.callbacks.patience", "7", "--trainer.logger", "false", run=False)
    assert run.subcommand is None and run.trainer.global_step == 0
    assert run.trainer.max_epochs == 4 and run.model.hparams.hidden_dim == 3
    stops = [c for c in run.trainer.callbacks if type(c).__name__ == "EarlyStopping"]
    assert len(stops) == 1 and stops[0].monitor == "val_loss" and stops[0].patience == 7
    assert run.config["seed_everything"] == 5


def test_optimizer_and_scheduler_from_the_config(tmp_path):
    with pytest.warns(UserWarning, match="Regressor.configure_optimizers is replaced by the optimizer from the config"):
        run = cli("fit", "--trainer.max_epochs", "2", *QUIET, "--trainer.logger", "false",
                  "--trainer.default_root_dir", str(tmp_path), "--optimizer", "Adam", "--optimizer.lr", "0.01",
                  "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "0.5")
    optimizer = run.trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 2)  # stepped once per epoch


@pytest.mark.parametrize("args, config, expected", [
    (["--trainer.max_epochz", "3"], None, "unknown key '--trainer.max_epochz' (did you mean '--trainer.max_epochs'?)"),
    (["--trainer.max_epochs", "abc"], None, "--trainer.max_epochs expects int or null, got 'abc'"),
    ([], {"model": {"hidden_dimm": 3}}, "unknown key 'model.hidden_dimm' (did you mean 'model.hidden_dim'?)"),
    ([], {"model": {"hidden_dim": "wide"}}, "--model.hidden_dim expects int, got 'wide'"),
    ([], {"trainer": {"callbacks": [{"class_path": "EarlyStoping"}]}}, "(did you mean 'EarlyStopping'?)"),
    (["--trainer.enable_autolog_hparams", "false"], None,
     "--trainer.enable_autolog_hparams=False: distengine's Trainer has no such flag"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, config, expected):
    if config is not None:
        args = ["--config", write(tmp_path / "bad.yaml", config)]
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{Path(sys.argv[0]).name} fit: error: "), err
    assert expected in err, err


def test_import_distengine_stays_light_and_the_extra_is_named(monkeypatch):
    code = "import sys, distengine; assert 'jsonargparse' not in sys.modules; print(distengine.cli.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "distengine.cli", out.stderr
    import distengine.cli as cli_pkg

    monkeypatch.delitem(cli_pkg.__dict__, "SaveConfigCallback", raising=False)
    monkeypatch.setitem(sys.modules, "jsonargparse", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"^SaveConfigCallback needs jsonargparse: pip install 'distengine\[cli\]'$"):
        cli_pkg.SaveConfigCallback  # noqa: B018


@pytest.mark.timeout(120)
def test_two_rank_launch_saves_one_config_and_matches_one_process(tmp_path):
    config = write(tmp_path / "c.yaml", {
        "seed_everything": True,  # drawn: both ranks must agree on it
        "trainer": {"max_epochs": 2, "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": {"class_path": "CSVLogger", "init_args": {"save_dir": str(tmp_path / "logs")}}},
        "model": {"hidden_dim": 6}, "data": {"batch_size": 8}})
    env = {k: v for k, v in __import__("os").environ.items()
           if not k.startswith(("DISTENGINE_", "TORCHELASTIC_", "PL_GLOBAL")) and k not in ("RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=str(ROOT / "tests" / "conformance" / "shim"), CLI_TEST_OUT=str(tmp_path),
               OMP_NUM_THREADS="1")
    cmd = [str(Path(sys.executable).parent / "distengine"), "launch", "--cpus", "2",
           str(ROOT / "tests" / "cli" / "train_cli.py"), "fit", "--config", config]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    saved = list((tmp_path / "logs").rglob("config.yaml"))
    assert len(saved) == 1
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    seed = yaml.safe_load(saved[0].read_text())["seed_everything"]
    assert [(r["rank"], r["world_size"], r["global_step"], r["seed"]) for r in ranks] == \
        [(0, 2, 8, seed), (1, 2, 8, seed)]
    # 2 ranks x batch 8 (no shuffle: rank r takes samples r, r+2, ...) == 1 process x batch 16
    one = cli("fit", "--config", config, "--seed_everything", str(seed), "--data.batch_size", "16",
              "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "one"),
              save_config_callback=None)
    assert one.trainer.global_step == 8
    for name, value in one.model.state_dict().items():
        assert torch.equal(ranks[0]["state_dict"][name], ranks[1]["state_dict"][name]), name
        torch.testing.assert_close(ranks[0]["state_dict"][name], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("content, expected", [
    (b"trainer:\n  max_epochs: 1\n# caf\xe9\n",
     "bad.yaml: not UTF-8 text (byte 0xe9 at offset 30); save the file as UTF-8"),
    (b"trainer:\n  max_epochs: 1\nmodel: !!python/object/apply:os.system [echo hi]\n",
     "bad.yaml line 3: tag !!python/object/apply:os.system is not allowed (configs are plain YAML data)"),
])
def test_unreadable_config_file_is_one_line_naming_it_exit_2(tmp_path, content, expected):
    (tmp_path / "bad.yaml").write_bytes(content)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("DISTENGINE_", "TORCHELASTIC_"))}
    env.update(PYTHONPATH=str(ROOT / "tests" / "conformance" / "shim"), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "cli" / "train_cli.py"), "fit", "--config", "bad.yaml"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr == f"train_cli.py fit: error: {expected}\n", out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing was built or written
