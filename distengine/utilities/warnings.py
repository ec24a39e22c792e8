"""``PossibleUserWarning`` (a warning that is often, not always, a mistake) and
``disable_possible_user_warnings``, as ``pytorch_lightning.utilities.warnings``."""
from __future__ import annotations

import warnings

__all__ = ["PossibleUserWarning", "disable_possible_user_warnings"]


class PossibleUserWarning(UserWarning):
    """A warning about something that is likely, but not surely, a mistake."""


def disable_possible_user_warnings(module: str = "") -> None:
    """Ignore :class:`PossibleUserWarning` from every module, or from those whose name matches
    ``module`` (a regular expression, as for :func:`warnings.filterwarnings`)."""
    warnings.filterwarnings("ignore", category=PossibleUserWarning, module=module)
