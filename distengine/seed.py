"""``seed_everything``: one call seeds Python, NumPy and torch in this process and its ranks."""
from __future__ import annotations

import os
import random


def seed_everything(seed: int | None = None, workers: bool = False) -> int:
    """Seed ``random``, NumPy and torch (CPU and CUDA) and record the seed in the environment
    (``DISTENGINE_SEED``; ``PL_GLOBAL_SEED`` too, for code that reads Lightning's variable),
    so launched ranks and the training sampler use it. ``workers=True`` also seeds Python and
    NumPy in every DataLoader worker from the worker's own torch seed (which differs per
    worker and per rank). Returns the seed.

    Example: ``distengine.seed_everything(42, workers=True)``
    """
    import torch

    if seed is None:
        seed = int(os.environ.get("DISTENGINE_SEED", os.environ.get("PL_GLOBAL_SEED", "0")) or 0)
    seed = int(seed)
    if not 0 <= seed <= 2**32 - 1:
        raise ValueError(f"seed {seed} is out of range: use 0 <= seed < 2**32")
    os.environ["DISTENGINE_SEED"] = os.environ["PL_GLOBAL_SEED"] = str(seed)
    os.environ["DISTENGINE_SEED_WORKERS"] = "1" if workers else "0"
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    torch.manual_seed(seed)
    return seed


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn`` installed when ``seed_everything(workers=True)`` was called."""
    import torch

    s = torch.initial_seed() % 2**32
    random.seed(s)
    try:
        import numpy as np

        np.random.seed(s)
    except ImportError:
        pass
