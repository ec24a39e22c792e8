"""``distengine.callbacks.progress``, Lightning's module path for its progress bars
(``pytorch_lightning.callbacks.progress``): the base class and the plain-line core are in
``progress_bar.py``, the tqdm bar in ``tqdm_progress.py``."""
from distengine.callbacks.progress_bar import ProgressBar, user_progress_bar
from distengine.callbacks.tqdm_progress import TQDMProgressBar

__all__ = ["ProgressBar", "TQDMProgressBar", "user_progress_bar"]
