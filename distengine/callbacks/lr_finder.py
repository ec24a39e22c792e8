"""``LearningRateFinder`` at Lightning's module path (``lightning.pytorch.callbacks.lr_finder``);
the class is defined in :mod:`distengine.callbacks.finders`, next to ``BatchSizeFinder``."""
from distengine.callbacks.finders import LearningRateFinder

__all__ = ["LearningRateFinder"]
