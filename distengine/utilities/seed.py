"""``pytorch_lightning.utilities.seed`` for distengine: ``isolate_rng`` (a context manager that
restores every random generator on exit; 2.x's only name here) and 1.x's ``seed_everything`` and
``reset_seed`` (2.x keeps them in ``lightning_fabric.utilities.seed``)."""
from distengine.seed import isolate_rng, reset_seed, seed_everything

__all__ = ["isolate_rng", "reset_seed", "seed_everything"]
