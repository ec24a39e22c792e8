"""Import support for the distengine side of the Lightning-suite gate (copied into the run folder).

The suite's files are Lightning's; on this side `pytorch_lightning` is distengine through the
conformance shim. Three things make them importable here without changing what they test:

- `pytorch_lightning.demos.*` resolves to the suite's own copy of Lightning's demos (BoringModel
  and friends: test models written against the public API), since distengine has no `demos`.
- `lightning_fabric.X` resolves to `pytorch_lightning.X` (distengine.X): a name distengine
  provides at the same path is found, any other one fails as it would without the alias.
- `lenient(module, names)`: the rewritten `from pytorch_lightning.x import a, b` of a suite file.
  A name that does not import becomes a placeholder that raises the original ImportError when
  the test uses it, so one missing name fails the tests that use it, not every test in the file.
  Version and availability flags (`_TORCH_GREATER_EQUAL_2_6`, `_RICH_AVAILABLE`, `_IS_WINDOWS`)
  are facts about the environment, computed here.
"""
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys

import pytorch_lightning  # noqa: F401  (installs the conformance shim's finder)

_DEMOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lsuite_demos")


class ReachesLightningInternals(Exception):
    """A suite fixture or helper that patches Lightning's private code: out of scope."""


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "pytorch_lightning.demos":
            return importlib.util.spec_from_file_location(
                name, os.path.join(_DEMOS, "__init__.py"), submodule_search_locations=[_DEMOS])
        if name.startswith("pytorch_lightning.demos."):
            return importlib.machinery.PathFinder.find_spec(name, [_DEMOS])
        if name == "lightning_fabric" or name.startswith("lightning_fabric."):
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        sys.modules[module.__name__] = importlib.import_module(
            "pytorch_lightning" + module.__name__[len("lightning_fabric"):])


sys.meta_path.insert(0, _Finder())


def _fact(name):
    """The value of an environment flag the suite imports from Lightning, or None."""
    match = re.fullmatch(r"_TORCH_GREATER_EQUAL_(\d+)_(\d+)", name)
    if match:
        import torch
        from packaging.version import Version

        return Version(Version(torch.__version__).base_version) >= Version(f"{match[1]}.{match[2]}")
    match = re.fullmatch(r"_([A-Z0-9_]+)_AVAILABLE", name)
    if match and "GREATER" not in name:
        module = {"SKLEARN": "sklearn", "TENSORBOARD": "tensorboard"}.get(match[1], match[1].lower())
        return importlib.util.find_spec(module) is not None
    if name == "_IS_WINDOWS":
        return sys.platform == "win32"
    return None


class _MissingMeta(type):
    """A missing name: using it raises the original ImportError. Attribute access gives another
    placeholder, so that module-level `RunningStage.TESTING.value` in a parametrize list still
    collects and only the tests given that value fail; comparing, calling, truth-testing,
    iterating, formatting or isinstance with it raises (repr and __name__ work, for pytest)."""

    def _fail(cls, *args, **kwargs):
        raise ImportError(cls._lsuite_error)

    __call__ = __instancecheck__ = __subclasscheck__ = __bool__ = __iter__ = __len__ = _fail
    __getitem__ = __enter__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __contains__ = _fail
    __fspath__ = __index__ = __int__ = __float__ = __str__ = __format__ = _fail
    __hash__ = type.__hash__

    def __getattr__(cls, attr):
        if attr.startswith("__") or attr == "_lsuite_error":
            raise AttributeError(attr)
        return _MissingMeta(f"{cls.__name__}.{attr}", (Exception,), {"_lsuite_error": cls._lsuite_error})


def _missing(name, error):
    # a class, so that a module-level `class Custom(Missing)` still defines (and fails when used);
    # an Exception, so that `pytest.raises(Missing)` fails on the ImportError, not on its argument
    return _MissingMeta(name, (Exception,), {"_lsuite_error": f"{error} (deferred until use by the gate)"})


def lenient(module, names):
    """`from module import *names` where each missing name becomes a placeholder."""
    try:
        mod = importlib.import_module(module)
        error = None
    except ImportError as exc:
        mod, error = None, exc
    values = []
    for name in names:
        if mod is not None and hasattr(mod, name):
            values.append(getattr(mod, name))
            continue
        if mod is not None:
            try:
                values.append(importlib.import_module(f"{module}.{name}"))
                continue
            except ImportError:
                pass
        fact = _fact(name)
        if fact is not None:
            values.append(fact)
            continue
        message = str(error) if error is not None else f"cannot import name {name!r} from {module!r}"
        values.append(_missing(name, message))
    return values[0] if len(values) == 1 else values
