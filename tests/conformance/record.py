"""Refresh the stored Lightning results of the conformance corpus (see cache.py).

    .venv/bin/python -m tests.conformance.record               # every script, 1 process and 2 ranks
    .venv/bin/python -m tests.conformance.record NAME ...      # only these scripts
    .venv/bin/python -m tests.conformance.record --missing     # only what has no usable entry here
    .venv/bin/python -m tests.conformance.record --check       # list what has none; exit 1 if any

Each run is real Lightning in its reference environment (built under .conformance/ if needed).
Commit tests/conformance/reference/ afterwards.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.conformance import cache, envs, harness


def record(script: harness.Script, ranks: int) -> Path:
    python = envs.lightning_python(script.style)
    with tempfile.TemporaryDirectory(prefix=f"record-{script.name}-") as tmp:
        run = harness.collect(harness.start(script, python, Path(tmp), distengine=False, ranks=ranks))
        return cache.save(script, ranks, run)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.conformance.record", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="script names (default: all)")
    parser.add_argument("--missing", action="store_true", help="only (script, ranks) with no usable entry")
    parser.add_argument("--check", action="store_true", help="only list what has no usable entry")
    args = parser.parse_args(argv)
    scripts = harness.corpus()
    unknown = set(args.names) - {s.name for s in scripts}
    if unknown:
        parser.error(f"no such script(s) {sorted(unknown)} in {harness.SCRIPTS}")
    if args.names:
        scripts = [s for s in scripts if s.name in args.names]
    todo = cache.missing(scripts) if args.missing or args.check else \
        [(s, n) for s in scripts for n in cache.rank_counts(s)]
    if args.check:
        for s, n in todo:
            print(f"no stored Lightning result for {s.name} on {n} rank(s)")
        return 1 if todo else 0
    for style in {s.style for s, _ in todo}:
        if not cache.enabled(style):
            parser.error(f"{envs.OVERRIDE[style]} or DISTENGINE_CONFORMANCE_CACHE=0 is set: results from "
                         "another interpreter are not stored; unset it")
    counts = {s.name: {str(n) for n in cache.rank_counts(s)} for s in harness.corpus()}
    gone = [p for p in cache.STORE.glob("*/*") if p.is_dir() and p.name not in counts.get(p.parent.name, ())]
    for folder in sorted(gone):
        shutil.rmtree(folder)  # the script is gone, or no longer runs on that many ranks
        print(f"removed {folder.parent.name}/{folder.name}")
        if not any(folder.parent.iterdir()):
            folder.parent.rmdir()
    for i, (script, ranks) in enumerate(todo, 1):
        begin = time.monotonic()
        folder = record(script, ranks)
        print(f"[{i}/{len(todo)}] {script.name} on {ranks} rank(s): {time.monotonic() - begin:.0f} s -> "
              f"{folder.relative_to(harness.HERE.parents[1])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
