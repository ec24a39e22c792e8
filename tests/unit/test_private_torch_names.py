"""Every private torch name the library uses is a decision on purpose, kept in one adapter.

Private torch names (a module path or an attribute that starts with ``_``) change between torch
releases without notice: ``_fsdp_param_groups`` is not there on torch 2.11, the elastic agent's
constructor changed in 2.11. So the library reaches them in two adapter modules only, each
function of which is tested on the oldest and newest supported torch (tests/torch_range.py):

* ``distengine/torch_private.py``: FSDP2, torch.distributed.checkpoint, amp internals;
* ``launch/elastic_private.py``: the elastic agent's extension points and state.

The test finds private torch names by reading the source (``ast``):

1. an import from a private torch module (``torch.distributed.fsdp._fully_shard...``) or of a
   private name (``from torch... import _load_state_dict``);
2. an attribute chain that starts at an imported torch name (``torch._amp_...``,
   ``dist._x``);
3. ``obj._name`` where ``_name`` is defined somewhere in the installed torch's own Python source
   and nowhere in distengine's (so distengine's own private fields do not count; a torch name
   that distengine also defines for itself would be missed, which the adapter lists guard
   against by review).

A new private name anywhere else fails the test; a new one inside an adapter fails it too until
it is added to ALLOWED below, with the reason in the adapter's table.
"""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
SOURCES = [REPO / "distengine"]
ADAPTERS = {"distengine/torch_private.py", "distengine/launch/elastic_private.py"}

#: file -> the private torch names it may use (imports and attributes)
ALLOWED: dict[str, set[str]] = {
    "distengine/torch_private.py": {
        "_BatchNorm", "_EmptyStateDictLoadPlanner", "_amp_foreach_non_finite_check_and_unscale_",
        "_auto_reshard_after_forward", "_checkpoint", "_checkpoint_wrapped_module", "_fsdp_common",
        "_fsdp_param_group", "_fsdp_param_groups", "_fully_shard", "_get_file_writer", "_get_fsdp_state",
        "_get_layout", "_get_metadata_path", "_load_state_dict", "_orig_mod", "_per_optimizer_states",
        "_post_forward", "_pre_forward", "_rebuild_buckets", "_reset_parameters", "_scale",
        "_step_supports_amp_scaling", "_training_state", "_traverse",
    },
    "distengine/launch/elastic_private.py": {
        "_bootstrap_store_info", "_create_tcp_store_server", "_monitor_workers", "_shared_tcp_store_server",
        "_shutdown", "_start_workers",
    },
}

_DEF = re.compile(r"(?:def|class)\s+(_[A-Za-z0-9]\w*)|self\.(_[A-Za-z0-9]\w*)\s*[:=]|^\s*(_[A-Za-z0-9]\w*)\s*[:=]",
                  re.M)


#: Python's own public names that start with an underscore (namedtuple's API)
PYTHON_PUBLIC = {"_fields", "_asdict", "_replace", "_make", "_field_defaults"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PYTHON_PUBLIC


def _files() -> list[Path]:
    return sorted(p for root in SOURCES for p in root.rglob("*.py"))


def _defined_names(paths) -> set[str]:
    names: set[str] = set()
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for match in _DEF.finditer(text):
            names.update(g for g in match.groups() if g)
    return names


@lru_cache(maxsize=1)
def _torch_private() -> frozenset[str]:
    root = Path(torch.__file__).parent
    return frozenset(_defined_names(list(root.rglob("*.py")) + list(root.rglob("*.pyi"))))


@lru_cache(maxsize=1)
def _own_private() -> frozenset[str]:
    """Private names distengine defines itself: functions, classes, names, ``self._x = ...``."""
    names: set[str] = set()
    for path in _files():
        if path.relative_to(REPO).as_posix() in ADAPTERS:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                names.add(node.attr)  # a store on another object may be a torch object's field
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return frozenset(n for n in names if _private(n))


def _chain_root(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _file_defined(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def private_torch_names(path: Path, adapter: bool = False) -> set[str]:
    """The private torch names ``path`` uses. In an adapter every private attribute it does not
    define itself counts (the names of one torch release need not exist in the installed one:
    2.11 has ``_fsdp_param_group`` where 2.13 has ``_fsdp_param_groups``)."""
    tree = ast.parse(path.read_text(), str(path))
    torch_aliases: set[str] = set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "torch":
                    torch_aliases.add(alias.asname or alias.name.split(".")[0])
                    found.update(p for p in alias.name.split(".") if _private(p))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "torch":
            found.update(p for p in node.module.split(".") if _private(p))
            for alias in node.names:
                torch_aliases.add(alias.asname or alias.name)
                if _private(alias.name):
                    found.add(alias.name)
    mine = _own_private()
    torch_names = _torch_private()
    if adapter:
        own = _file_defined(tree)
        torch_names = torch_names | {n.attr for n in ast.walk(tree)
                                     if isinstance(n, ast.Attribute) and _private(n.attr) and n.attr not in own}
        torch_names |= {n.args[1].value for n in ast.walk(tree)
                        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "getattr"
                        and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant)
                        and isinstance(n.args[1].value, str) and _private(n.args[1].value)
                        and n.args[1].value not in own}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            if _chain_root(node) in torch_aliases:
                found.add(node.attr)
            elif node.attr in torch_names and node.attr not in mine:
                found.add(node.attr)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            name = node.args[1].value  # getattr(obj, "_x", default) reaches the same field
            if _private(name) and name in torch_names and name not in mine:
                found.add(name)
    return found


def test_private_torch_names_only_in_the_adapters():
    outside = {}
    for path in _files():
        rel = path.relative_to(REPO).as_posix()
        if rel in ADAPTERS:
            continue
        names = private_torch_names(path)
        if names:
            outside[rel] = sorted(names)
    assert not outside, ("private torch names outside distengine/torch_private.py and "
                         f"distengine/launch/elastic_private.py: {outside}; put each behind an adapter there")


def test_adapters_use_exactly_the_listed_private_names():
    for rel, allowed in ALLOWED.items():
        path = REPO / rel
        assert path.exists(), f"{rel} is missing"
        used = private_torch_names(path, adapter=True)
        assert used == allowed, (f"{rel}: private torch names used but not listed: {sorted(used - allowed)}; "
                                 f"listed but no longer used: {sorted(allowed - used)} (update ALLOWED)")


def test_the_scan_finds_each_kind_of_private_use(tmp_path):
    """The detector itself: each of the three kinds is found, a public use is not."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import torch\n"
        "from torch.distributed.fsdp._fully_shard._fsdp_common import TrainingState\n"
        "from torch.distributed.checkpoint.state_dict_loader import _load_state_dict\n"
        "from torch.distributed.fsdp import fully_shard\n"
        "def f(module, agent):\n"
        "    torch._amp_foreach_non_finite_check_and_unscale_([], None, None)\n"
        "    state = module._get_fsdp_state()\n"
        "    scale = getattr(module, '_scale', None)\n"
        "    return agent._pcontext, fully_shard, torch.nn.Linear\n")
    found = private_torch_names(sample)
    assert {"_fully_shard", "_fsdp_common", "_load_state_dict", "_amp_foreach_non_finite_check_and_unscale_",
            "_get_fsdp_state", "_pcontext", "_scale"} <= found
    assert not any(not name.startswith("_") for name in found)
