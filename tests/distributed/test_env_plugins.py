"""``Trainer(plugins=[env])``: the rank and world size come from the given cluster environment.

Two real gloo ranks whose environment has none of the variables distengine detects (no RANK,
WORLD_SIZE, SLURM_*): only a ClusterEnvironment subclass reading the cluster's own variables
says where each process sits, and the Trainer trains as rank r of 2 with it."""
from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader

import distengine as de
from distengine.plugins.environments import ClusterEnvironment
from tests.core.models import Regressor, regression_data
from tests.helpers import run_ranks


class SiteCluster(ClusterEnvironment):
    """A site's own scheduler: TASK_ID, TASK_COUNT, HEAD_HOST, HEAD_PORT."""

    creates_processes_externally = True

    @property
    def main_address(self):
        return os.environ["HEAD_HOST"]

    @property
    def main_port(self):
        return int(os.environ["HEAD_PORT"])

    @staticmethod
    def detect():
        return "TASK_ID" in os.environ

    def world_size(self):
        return int(os.environ["TASK_COUNT"])

    def set_world_size(self, size):
        pass

    def global_rank(self):
        return int(os.environ["TASK_ID"])

    def set_global_rank(self, rank):
        pass

    def local_rank(self):
        return int(os.environ["TASK_ID"])

    def node_rank(self):
        return 0


def _rank(rank, tmp):
    port = os.environ["MASTER_PORT"]
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(k)
    os.environ.update({"TASK_ID": str(rank), "TASK_COUNT": "2", "HEAD_HOST": "127.0.0.1", "HEAD_PORT": port})
    without = de.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp)
    trainer = de.Trainer(plugins=[SiteCluster()], accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, max_steps=2, default_root_dir=tmp)
    model = Regressor()
    trainer.fit(model, DataLoader(regression_data(16), batch_size=4))
    import torch.distributed as dist

    return {"without": (without.world_size, without.global_rank),
            "with": (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank),
            "group": (dist.get_world_size(), dist.get_rank()), "step": trainer.global_step,
            "weight": next(model.parameters()).detach().clone()}


def test_trainer_takes_rank_and_world_size_from_a_cluster_environment_plugin(tmp_path):
    out = run_ranks(_rank, 2, str(tmp_path), timeout=90)
    for rank, r in enumerate(out):
        assert r["without"] == (1, 0)  # distengine alone sees one process here
        assert r["with"] == (2, rank, rank, 0) and r["group"] == (2, rank) and r["step"] == 2
    assert torch.equal(out[0]["weight"], out[1]["weight"])  # one DDP job: the ranks agree
