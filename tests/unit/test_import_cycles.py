"""Import cycles among distengine modules (issue 22). Read from the sources with ``ast``
(benchmarks/structure.py does the graph): a module-level cycle fails at once; a cycle that is
only closed by imports inside function bodies (an import hidden in a function to dodge the
circle) fails too unless it is in ALLOWED with its reason, and an ALLOWED entry that no longer
is a cycle fails so that the list shrinks as circles are broken."""
from __future__ import annotations

from benchmarks.structure import all_cycles, module_level_cycles

# the modules of one remaining cycle (strongly connected component, names without "distengine.")
# -> why it is still there
ALLOWED: dict[frozenset[str], str] = {}  # none left (the progress-bar pair was the last, issue 22)


def _short(comp: list[str]) -> frozenset[str]:
    return frozenset(c.removeprefix("distengine.") for c in comp)


def test_no_module_level_import_cycle():
    cycles = module_level_cycles()
    assert not cycles, "module-level import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_function_body_cycles_are_the_allowed_ones():
    found = {_short(c) for c in all_cycles()}
    new = [sorted(c) for c in found if c not in ALLOWED]
    gone = [sorted(c) for c in ALLOWED if c not in found]
    assert not new, f"import cycles closed by function-body imports (break them or allow with a reason): {new}"
    assert not gone, f"these allowed cycles no longer exist; remove them from ALLOWED: {gone}"
