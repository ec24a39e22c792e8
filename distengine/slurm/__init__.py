"""Run distengine scripts on SLURM: submit through submitit (one task per rank), requeue on
preemption and time limits, resume by itself; plus sbatch templates and a local test cluster.

Example::

    from distengine.slurm import SubmitConfig, submit
    cfg = SubmitConfig(script="train.py", nodes=2, gpus_per_node=4, time="04:00:00")
    cfg.validate()
    job_id, log_folder = submit(cfg)

or from a shell: ``distengine slurm submit --nodes 2 --gpus-per-node 4 --time 04:00:00 train.py``.
Nothing here imports torch or submitit until a job is submitted.
"""
from distengine.slurm.cli import main, submit
from distengine.slurm.config import ConfigError, SubmitConfig

__all__ = ["ConfigError", "SubmitConfig", "main", "submit"]
