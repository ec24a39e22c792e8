"""``BatchSizeFinder`` at Lightning's module path (``lightning.pytorch.callbacks.batch_size_finder``);
the class is defined in :mod:`distengine.callbacks.finders`, next to ``LearningRateFinder``."""
from distengine.callbacks.finders import BatchSizeFinder

__all__ = ["BatchSizeFinder"]
