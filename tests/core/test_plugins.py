"""``Trainer(plugins=...)``: cluster environments set the rank and world size, precision
plugins the precision, anything else is a one-line error (see tests/distributed/test_env_plugins.py
for a 2-rank run)."""
from __future__ import annotations

import pytest

import distengine as de
from distengine.plugins import DoublePrecision, HalfPrecision, MixedPrecision
from distengine.plugins.environments import LightningEnvironment, MPIEnvironment, SLURMEnvironment


def _trainer(tmp_path, **kw):
    return de.Trainer(accelerator="cpu", logger=False, default_root_dir=str(tmp_path), **kw)


def test_precision_plugins_set_the_precision(tmp_path):
    assert _trainer(tmp_path, plugins=[MixedPrecision("bf16-mixed", "cpu")]).precision == "bf16-mixed"
    assert _trainer(tmp_path, plugins=DoublePrecision()).precision == "64-true"
    assert _trainer(tmp_path, plugins=[HalfPrecision("bf16-true")]).precision == "bf16-true"
    with pytest.raises(ValueError, match=r"both precision='16-mixed' and a precision plugin"):
        _trainer(tmp_path, precision="16-mixed", plugins=[DoublePrecision()])


@pytest.mark.parametrize("plugin", [object(), "ddp_sharded"])
def test_unsupported_plugin_is_a_one_line_error(tmp_path, plugin):
    with pytest.raises(ValueError, match=r"Trainer\(plugins=\[\w+\]\) is not supported by distengine") as info:
        _trainer(tmp_path, plugins=[plugin])
    assert "\n" not in str(info.value)


def test_lightning_environment_under_a_launcher_takes_world_size_from_devices(tmp_path, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("NODE_RANK", "1")
    env = LightningEnvironment()
    t = _trainer(tmp_path, plugins=[env], devices=2, num_nodes=2)
    assert (t.world_size, t.global_rank, t.local_rank, t.node_rank) == (4, 3, 1, 1)
    assert (env.world_size(), env.global_rank()) == (4, 3)  # as Lightning's strategy sets them
    de.utilities.rank_zero_only.rank = None


def test_slurm_environment_checks_the_job_as_lightning(monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    with pytest.raises(RuntimeError, match="--ntasks-per-node=4"):
        SLURMEnvironment()


def test_mpi_environment_without_mpi4py():
    pytest.importorskip("torch")
    try:
        import mpi4py  # noqa: F401
        pytest.skip("mpi4py is installed")
    except ImportError:
        pass
    with pytest.raises(ModuleNotFoundError, match=r"mpi4py.*pip install"):
        MPIEnvironment()
    assert MPIEnvironment.detect() is False


def test_environment_outside_its_cluster_is_a_one_line_error(tmp_path, monkeypatch):
    for k in ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ValueError, match=r"SLURMEnvironment reads the environment variable SLURM_NTASKS, which is "
                                         r"not set; start the script under that cluster's launcher"):
        _trainer(tmp_path, plugins=[SLURMEnvironment()])
