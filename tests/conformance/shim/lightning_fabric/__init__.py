"""`import lightning_fabric...` under the distengine side of the conformance harness, for the few
Fabric module paths Lightning scripts import from (``lightning_fabric.utilities.exceptions``,
``lightning_fabric.utilities.warnings``...): each resolves to the distengine module of the same
name under ``distengine.utilities``. Other ``lightning_fabric`` modules do not exist here."""
import importlib
import importlib.abc
import importlib.util
import sys

_PREFIX = "lightning_fabric."
_MODULES = {"lightning_fabric.utilities": "distengine.utilities",
            "lightning_fabric.utilities.exceptions": "distengine.utilities.exceptions",
            "lightning_fabric.utilities.warnings": "distengine.utilities.warnings",
            "lightning_fabric.utilities.rank_zero": "distengine.utilities.rank_zero",
            "lightning_fabric.utilities.seed": "distengine.utilities.seed"}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name not in _MODULES:
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        sys.modules[module.__name__] = importlib.import_module(_MODULES[module.__name__])


sys.meta_path.insert(0, _Alias())
