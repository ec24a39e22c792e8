"""Lay out a run folder for one side: the suite's files, their imports rewritten, plus our support.

Nothing of Lightning's is kept in the project: each run copies the suite (found through
DISTENGINE_LIGHTNING_TESTS) into a temporary folder, rewriting `lightning.pytorch` ->
`pytorch_lightning` and `lightning.fabric` -> `lightning_fabric` as Lightning's own CI does for
the standalone packages. On the distengine side three more changes are made, all in our own
files under support/: the suite's conftest.py and helpers/runif.py (which import Lightning
internals) are replaced by de_conftest.py and de_runif.py, and each
`from pytorch_lightning... import names` / `from lightning_fabric... import names` statement
becomes a call of lsuite_support.lenient (same line count, so tracebacks keep their lines).
"""
from __future__ import annotations

import ast
import hashlib
import re
import shutil
from pathlib import Path

from tests.lightning_suite import EXCLUDE, SUPPORT

_REWRITE = re.compile(r"(?<![\w.])lightning\.(pytorch|fabric)\b")
_TARGET = {"pytorch": "pytorch_lightning", "fabric": "lightning_fabric"}
_LIB = ("pytorch_lightning", "lightning_fabric")


def rewrite_imports(text: str) -> str:
    return _REWRITE.sub(lambda m: _TARGET[m[1]], text)


def lenient_imports(text: str) -> str:
    """Turn each single-statement `from <lib>... import a, b as c` into a lenient call."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return text
    lines = text.splitlines(keepends=True)
    for node in sorted(_from_imports(tree), key=lambda n: n.lineno, reverse=True):
        first, last = node.lineno - 1, node.end_lineno - 1
        head, tail = lines[first][:node.col_offset], lines[last][node.end_col_offset:]
        if head.strip() or tail.strip() and not tail.strip().startswith("#"):
            continue  # shares its line with other code: leave it as it is
        targets = ", ".join(a.asname or a.name for a in node.names)
        names = ", ".join(repr(a.name) for a in node.names)
        call = f"{targets} = __import__('lsuite_support').lenient({node.module!r}, [{names}])"
        lines[first:last + 1] = [head + call + "\n"] + ["\n"] * (last - first)
    return "".join(lines)


def _from_imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in _LIB and all(a.name != "*" for a in node.names):
            yield node


def _copy_tree(src: Path, dest: Path, transform) -> None:
    for path in sorted(src.rglob("*")):
        if "__pycache__" in path.parts or path.is_dir():
            continue
        out = dest / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".py":
            out.write_text(transform(path.read_text()))
        else:
            shutil.copyfile(path, out)


_INI = """[pytest]
addopts = -p lsuite_plugin -p no:cacheprovider -p no:timeout -p no:randomly --continue-on-collection-errors
"""


def build(suite: Path, side: str, dest: Path) -> Path:
    """Fill dest (empty) for `side` ("lightning" or "distengine"); return the folder to run in."""
    work = dest / "work"  # tests_pytorch's project root is work/.. (its Datasets folder lands there)
    if side == "lightning":
        _copy_tree(suite / "tests_pytorch", work / "tests_pytorch", rewrite_imports)
    else:
        transform = lambda text: lenient_imports(rewrite_imports(text))  # noqa: E731
        _copy_tree(suite / "tests_pytorch", work / "tests_pytorch", transform)
        _copy_tree(suite / "demos", work / "lsuite_demos", transform)
        shutil.copyfile(SUPPORT / "de_conftest.py", work / "tests_pytorch" / "conftest.py")
        shutil.copyfile(SUPPORT / "de_runif.py", work / "tests_pytorch" / "helpers" / "runif.py")
        shutil.copyfile(SUPPORT / "lsuite_support.py", work / "lsuite_support.py")
    shutil.copyfile(SUPPORT / "lsuite_plugin.py", work / "lsuite_plugin.py")
    (work / "pytest.ini").write_text(_INI)
    return work


def content_key(suite: Path, rel: str) -> str:
    """What a file's Lightning result depends on in the suite: the file, its shared helpers
    (conftests, helpers/, demos/, package __init__s), our plugin and the excluded ids."""
    digest = hashlib.sha256(repr(EXCLUDE).encode())
    shared = sorted(p for p in (suite / "tests_pytorch").rglob("*.py")
                    if p.name in ("conftest.py", "__init__.py") or "helpers" in p.parts)
    shared += sorted((suite / "demos").rglob("*.py")) + [SUPPORT / "lsuite_plugin.py"]
    for path in [suite / "tests_pytorch" / rel, *shared]:
        # names relative to the suite (or to our support folder): the key must not depend on where
        # the suite or this clone lies (a CI clone is elsewhere)
        base = SUPPORT if path.is_relative_to(SUPPORT) else suite
        digest.update(path.relative_to(base).as_posix().encode())
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
    return digest.hexdigest()[:16]
