import os

import pytest

_DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
              "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT", "SLURM_PROCID", "SLURM_NTASKS",
              "SLURM_LOCALID", "SLURM_JOB_ID", "SLURM_NODEID", "SLURM_JOB_NODELIST", "SLURM_RESTART_COUNT",
              "SLURM_NTASKS_PER_NODE", "SLURM_NNODES", "SLURM_JOB_NAME", "DISTENGINE_DEBUG",
              "DISTENGINE_ACCELERATOR")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """Each test starts outside any job, and leaves no process group behind."""
    saved = dict(os.environ)  # tests (and seed_everything) may set variables; undo all of it
    for name in _DIST_VARS + ("DISTENGINE_SEED", "PL_GLOBAL_SEED", "DISTENGINE_SEED_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    import torch

    torch.set_num_threads(1)
    yield
    os.environ.clear()
    os.environ.update(saved)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture
def repo_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
