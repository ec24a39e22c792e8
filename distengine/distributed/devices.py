"""Which accelerator and how many devices a Trainer uses (``accelerator``/``devices``/``gpus``
flags against what the machine and the launcher provide)."""
from __future__ import annotations

import os
from typing import Any

import torch

from distengine.distributed.env import OVERSUBSCRIBE_VAR, ClusterEnv, oversubscribe_allowed, usable_cpu_count
from distengine.utilities.exceptions import ConfigError


def _gpu_count() -> int:
    # device_count() asks NVML when it can and does not create a CUDA context
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_devices(accelerator: str, devices: Any, gpus: Any, env: ClusterEnv) -> tuple[str, int, list[int]]:
    """Return ``(accelerator, devices per node, gpu ids)`` or raise a one-line error."""
    if gpus is not None:  # 1.x: gpus=2, gpus=[0, 1], gpus="0,1", gpus=0 (CPU)
        if gpus in (0, "0", [], "") :
            accelerator, devices = "cpu", devices
        else:
            accelerator, devices = "gpu", gpus
    accelerator = {"cuda": "gpu"}.get(str(accelerator).lower(), str(accelerator).lower())
    if accelerator not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"accelerator={accelerator!r} is not supported; use 'auto', 'cpu' or 'gpu'")
    forced = os.environ.get("DISTENGINE_ACCELERATOR")
    if accelerator == "auto":
        accelerator = forced if forced in ("cpu", "gpu") else ("gpu" if _gpu_count() > 0 else "cpu")
    ids: list[int] = []
    if devices is None:
        # Lightning 1.9.5's default (argparse scripts and 1.x configs pass it): "auto".
        # 2.6.6 raises a TypeError for it; accepting it breaks no 2.x script.
        devices = "auto"
    if isinstance(devices, str) and devices != "auto":
        devices = [int(x) for x in devices.split(",") if x.strip()] if "," in devices else int(devices)
    if isinstance(devices, (list, tuple)):
        ids = [int(i) for i in devices]
        count = len(ids)
    elif devices == "auto":
        count = env.local_world_size if env.distributed else 1
    else:
        count = int(devices)
        if count == -1:
            count = _gpu_count() if accelerator == "gpu" else usable_cpu_count()
    if count < 1:
        raise ConfigError(f"devices={devices!r} asks for no device; use devices=1 or more")
    if accelerator == "cpu" and count > 1 and not env.distributed:
        # fit() would start one process per device: more than the cores is refused here, before
        # anything runs, unless asked for (a devices=999 typo once took a machine down)
        cores = usable_cpu_count()
        if count > cores and not oversubscribe_allowed():
            raise ConfigError(f"Trainer(devices={count}) on CPU would start {count} processes but this machine "
                              f"gives this process {cores} CPU core(s); use devices={cores} or fewer, or set "
                              f"{OVERSUBSCRIBE_VAR}=1 to run more processes than cores")
    if accelerator == "gpu":
        available = _gpu_count()
        wanted = max(ids) + 1 if ids else count
        if env.distributed:
            wanted = 1  # each rank sees the device(s) the launcher gave it
        if available < wanted:
            what = f"GPU indices {ids}" if ids else f"{count} GPU(s)"
            # with gpus=..., accelerator='cpu' would not help: gpus overrides it (as in 1.x)
            fix = f"remove gpus={gpus!r} (or set gpus=0 or None) to train on the CPU" if gpus is not None \
                else "use accelerator='cpu' or fewer devices"
            raise ConfigError(f"asked for {what} but {available} GPU(s) are available "
                              f"(torch.cuda.device_count()={available}); {fix}")
        ids = ids or list(range(count))
    if env.distributed and devices != "auto" and count != env.local_world_size:
        raise ConfigError(f"Trainer(devices={count}) contradicts the launched job, which runs "
                          f"{env.local_world_size} process(es) per node; use devices='auto' or launch {count}")
    return accelerator, count, ids
