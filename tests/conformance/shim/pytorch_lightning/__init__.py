"""`import pytorch_lightning` under the distengine side of the conformance harness.

The corpus scripts are plain Lightning scripts. When the harness runs one under distengine it
puts this folder first on PYTHONPATH, so the script's own imports (`import pytorch_lightning as
pl`, `from pytorch_lightning.callbacks import ModelCheckpoint`, ...) resolve to distengine's
modules: the only change a user makes is the import, and here not even that.
"""
import importlib
import importlib.abc
import importlib.util
import sys

import distengine

_PREFIX = "pytorch_lightning."
# Lightning module paths whose distengine module has another name (distengine.trainer is a module,
# not a package, so `pytorch_lightning.trainer.states` cannot map by name)
_RENAMED = {"trainer.states": "trainer_states", "trainer.trainer": "trainer", "tuner.tuning": "tuner",
            "core.module": "module", "core.datamodule": "datamodule", "core.saving": "saving",
            "core.optimizer": "optim"}
# served as packages that read their names from a distengine module ("" is distengine itself)
_PACKAGES = {"trainer": "trainer", "tuner": "tuner", "core": ""}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolve `pytorch_lightning.X.Y` to `distengine.X.Y` (an ImportError names the module)."""

    def find_spec(self, name, path=None, target=None):
        if not name.startswith(_PREFIX):
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        rest = module.__name__[len(_PREFIX):]
        if rest in _PACKAGES:  # keep this module (a package) and read names from distengine's
            inner = importlib.import_module("distengine" + ("." + _PACKAGES[rest] if _PACKAGES[rest] else ""))
            module.__path__ = []
            module.__getattr__ = lambda name: getattr(inner, name)
            return
        target = "distengine." + _RENAMED.get(rest, rest)
        # the import system returns whatever sys.modules holds after exec_module
        sys.modules[module.__name__] = importlib.import_module(target)


sys.meta_path.insert(0, _Alias())
sys.modules[__name__] = distengine
