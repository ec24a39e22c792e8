"""``seed_everything``: one call seeds Python, NumPy and torch in this process and its ranks."""
from __future__ import annotations

import contextlib
import os
import random
from typing import Iterator


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed ``random``, NumPy and torch (CPU and CUDA) and record the seed in the environment
    (``DISTENGINE_SEED``; ``PL_GLOBAL_SEED`` too, for code that reads Lightning's variable),
    so launched ranks and the training sampler use it. ``workers=True`` also seeds Python and
    NumPy in every DataLoader worker from the worker's own torch seed (which differs per
    worker and per rank). ``verbose`` (as Lightning): warn when no seed was given or set,
    and log ``Seed set to N``. Returns the seed.

    Example: ``distengine.seed_everything(42, workers=True)``
    """
    import torch

    if seed is None:
        env_seed = os.environ.get("DISTENGINE_SEED", os.environ.get("PL_GLOBAL_SEED"))
        if env_seed is None and verbose:
            import warnings

            warnings.warn("No seed found, seed set to 0", UserWarning, stacklevel=2)
        try:
            seed = int(env_seed or 0)
        except ValueError:
            raise ValueError(f"Invalid seed specified via PL_GLOBAL_SEED: {env_seed!r}") from None
    seed = int(seed)
    if not 0 <= seed <= 2**32 - 1:
        raise ValueError(f"seed {seed} is out of range: use 0 <= seed < 2**32")
    os.environ["DISTENGINE_SEED"] = os.environ["PL_GLOBAL_SEED"] = str(seed)
    os.environ["DISTENGINE_SEED_WORKERS"] = os.environ["PL_SEED_WORKERS"] = "1" if workers else "0"
    if verbose:
        import logging

        logging.getLogger("distengine").info("Seed set to %d", seed)
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


def reset_seed() -> None:
    """Seed again with what :func:`seed_everything` last set (``PL_GLOBAL_SEED``, with its
    ``workers`` choice); nothing when it was never called."""
    seed = os.environ.get("DISTENGINE_SEED", os.environ.get("PL_GLOBAL_SEED"))
    if seed is None:
        return
    workers = os.environ.get("DISTENGINE_SEED_WORKERS", os.environ.get("PL_SEED_WORKERS", "0"))
    seed_everything(int(seed), workers=bool(int(workers)), verbose=False)


@contextlib.contextmanager
def isolate_rng(include_cuda: bool = True) -> Iterator[None]:
    """Run the ``with`` block and then put the random state of torch, NumPy and ``random``
    (and CUDA's, unless ``include_cuda=False``) back to what it was when the block started."""
    import torch

    from distengine.checkpoint.rng import capture_rng_state, restore_rng_state

    state = capture_rng_state()
    cuda = torch.cuda.get_rng_state_all() if include_cuda and torch.cuda.is_available() else None
    try:
        yield
    finally:
        state.pop("cuda", None)
        restore_rng_state(state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
