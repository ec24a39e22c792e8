"""Sort a distengine failure of a suite test into a class, and name its cause.

A  reaches Lightning internals: a private name (leading underscore) or a module/attribute that
   is Lightning's machinery rather than its API (loops, trainer connectors, launchers,
   `trainer.fit_loop` and friends), or a suite fixture that patches them: out of scope.
B  public API missing: an ImportError/AttributeError on a public name, an unexpected keyword or
   a call signature that does not match.
C  same API, different behaviour: everything else (an assertion, a wrong value, a missing
   warning, an exception Lightning does not raise, a timeout).

The cause is what the table groups failures by: the missing name for A/B, the first line of the
message (numbers and addresses folded) for C. overrides.py can declare a different class and
must give the reason.
"""
from __future__ import annotations

import fnmatch
import re

INTERNAL_MODULES = ("loops", "trainer.connectors", "overrides", "strategies.launchers", "utilities.testing",
                    "_graveyard", "core.hooks", "trainer.call", "plugins.io")
INTERNAL_ATTRS = {"fit_loop", "validate_loop", "test_loop", "predict_loop", "epoch_loop", "batch_progress",
                  "epoch_progress", "optim_progress", "automatic_optimization_loop", "manual_optimization",
                  "_results", "_logger_connector", "_data_connector", "_callback_connector",
                  "_checkpoint_connector", "_accelerator_connector", "_signal_connector"}
_LIB = re.compile(r"^(pytorch_lightning|lightning_fabric|distengine)\.?")


def _lightning_path(module: str) -> str:
    return _LIB.sub("", module)


def _is_internal_module(module: str) -> bool:
    path = _lightning_path(module)
    return any(part.startswith("_") for part in path.split(".")) or any(
        path == m or path.startswith(m + ".") for m in INTERNAL_MODULES)


def _import_class(module: str, name: str | None) -> str:
    if _is_internal_module(module) or (name or "").startswith("_"):
        return "A"
    return "B"


def classify(record: dict) -> tuple[str, str]:
    """(class, cause) of a failing distengine result record (message + traceback text)."""
    msg = (record.get("message") or "").strip()
    text = record.get("text") or ""
    if "ReachesLightningInternals" in text or "patches Lightning's private modules" in msg:
        return "A", "suite fixture patches Lightning internals"
    m = re.search(r"cannot import name '([^']+)' from '([^']+)'", msg)
    if m:
        return _import_class(m[2], m[1]), f"import {_lightning_path(m[2])}.{m[1]}".replace(" .", " ")
    m = re.search(r"No module named '([^']+)'", msg)
    if m:
        if not _LIB.match(m[1]):
            return "C", f"needs module {m[1]}"
        return _import_class(m[1], None), f"module {_lightning_path(m[1]) or m[1]}"
    m = re.search(r"module '([^']+)' has no attribute '([^']+)'", msg)
    if m and _LIB.match(m[1]):
        return _import_class(m[1], m[2]), f"attribute {_lightning_path(m[1])}.{m[2]}".replace(" .", " ")
    m = re.search(r"(?:'(\w+)' object|type object '(\w+)'|<[^>]*?(\w+)[^>]*>) (?:has no attribute|does not have "
                  r"the attribute) '([^']+)'", msg)
    if m and (m[1] or m[2] or m[3]) not in ("NoneType", "int", "float", "str", "list", "dict", "tuple", "Tensor"):
        owner, attr = m[1] or m[2] or m[3], m[4]
        cls = "A" if attr.startswith("_") or attr in INTERNAL_ATTRS else "B"
        return cls, f"attribute {owner}.{attr}"
    m = re.search(r"property '(\w+)' of '(\w+)' object has no setter", msg)
    if m:
        return "B", f"setter {m[2]}.{m[1]}"
    m = re.search(r"(\w+) got an unknown flag '([^']+)'", msg)  # distengine's Trainer on an unknown keyword
    if m:
        return "B", f"keyword {m[1]}({m[2]}=)"
    m = re.search(r"([\w.]+)\(\) got an unexpected keyword argument '([^']+)'", msg)
    if m:
        return ("A" if m[2].startswith("_") else "B"), f"keyword {m[1]}({m[2]}=)"
    m = re.search(r"([\w.]+)\(\) (missing \d+ required|takes \d+ positional|takes from)", msg)
    if m:
        return "B", f"signature {m[1]}(): {m[2]}"
    return "C", _fold(msg)


def _fold(msg: str) -> str:
    first = msg.splitlines()[0] if msg else "(no message)"
    first = re.sub(r"0x[0-9a-f]+", "0x…", first)
    first = re.sub(r"/tmp/\S+", "<tmp>", first)
    first = re.sub(r"\d+(\.\d+)?", "N", first)
    return first[:110]


def apply_overrides(test_id: str, cls: str, cause: str, overrides) -> tuple[str, str, str | None]:
    """The (class, cause, reason) after the first matching override (pattern, class, reason).

    A pattern is matched against the test id (the id itself first: "[1]" in a pattern is a
    character class), or, written ``"cause:<pattern>"``, against the cause of a failure of the
    override's class (a class-B name declared out of scope for every test that misses it)."""
    for pattern, new_cls, reason in overrides:
        if pattern.startswith("cause:"):
            if cls == new_cls and fnmatch.fnmatchcase(cause, pattern[len("cause:"):]):
                return new_cls, cause, reason
        elif test_id == pattern or fnmatch.fnmatchcase(test_id, pattern):
            return new_cls, cause, reason
    return cls, cause, None
