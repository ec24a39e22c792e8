"""Run suite files on one side in at most two pytest subprocesses and collect per-test outcomes.

Each subprocess writes JSON lines (support/lsuite_plugin.py); a process that dies mid-test (a
crash, or a test stuck past its limit plus 30 s) leaves the test it died in marked "crashed" and
the rest of its tests are run by a new process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.lightning_suite import EXCLUDE, REPO, prepare

SHIM = REPO / "tests" / "conformance" / "shim"
_DROP_ENV = ("PL_", "DISTENGINE_", "LSUITE_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_", "SLURM_",
             "PYTEST_", "NODE_RANK", "GROUP_RANK", "TORCHELASTIC_")


def _env(side: str, work: Path, extra_path: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_ENV)}
    paths = [str(work), *extra_path]
    if side == "distengine":
        paths.append(str(SHIM))
    env.update(PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="", PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0",
               LSUITE_EXCLUDE="\n".join(EXCLUDE))
    return env


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line cut by a killed process
    return out


def _run_group(python, side, work, files, select, env, timeout, deadline, results, errors, tag):  # noqa: C901
    """Run `files` (only the ids in `select` when given) until every collected test has a result."""
    pending = None if select is None else set(select)
    attempt = 0
    while True:
        attempt += 1
        out = work.parent / f"{tag}-{attempt}.jsonl"
        sel_file = work.parent / f"{tag}-{attempt}.select"
        run_env = dict(env, LSUITE_RESULTS=str(out), LSUITE_TIMEOUT=str(timeout))
        if pending is not None:
            sel_file.write_text("".join(i + "\n" for i in sorted(pending)))
            run_env["LSUITE_SELECT"] = str(sel_file)
        cmd = [str(python), "-m", "pytest", "-q", "-c", str(work / "pytest.ini"), "--rootdir", str(work),
               f"--basetemp={work.parent / ('tmp-' + tag)}", *[f"tests_pytorch/{f}" for f in files]]
        left = max(10.0, deadline - time.monotonic())
        with open(work.parent / f"{tag}-{attempt}.log", "w") as log:
            try:
                proc = subprocess.run(cmd, cwd=work, env=run_env, stdout=log, stderr=subprocess.STDOUT,
                                      timeout=left)
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        collected, started, last, got = [], None, None, 0
        for rec in _read(out):
            if rec["event"] == "collected":
                collected = rec["ids"]
            elif rec["event"] == "collect_error":
                errors[rec["id"]] = rec
            elif rec["event"] == "start":
                started = rec["id"]
            elif rec["event"] == "result":
                results[rec["id"]] = rec
                started, last, got = None, rec["id"], got + 1
        remaining = [i for i in collected if i not in results]
        if rc == "timeout" or not remaining or (started is None and not got):
            for i in remaining:
                results[i] = {"id": i, "outcome": "not run", "seconds": 0.0,
                              "message": f"lightning_suite: not run (the test process ended: rc {rc})"}
            return
        # the process ended with tests left: the one it was in (or, when it ended between tests, as
        # a KeyboardInterrupt escaping a test does, the last one reported) is marked, the rest rerun
        culprit = started or last
        log_tail = (work.parent / f"{tag}-{attempt}.log").read_text()[-3000:]
        why = f"rc {rc}; " + (log_tail.strip().splitlines() or [""])[-1][:200]
        results[culprit] = dict(results.get(culprit, {}), id=culprit, outcome="crashed",
                                message=f"lightning_suite: the test process ended in or after this test ({why})",
                                text=log_tail)
        pending = set(remaining) - {culprit}


def _split(files: list[str], weights: dict[str, float], workers: int) -> list[list[str]]:
    groups = [[] for _ in range(workers)]
    load = [0.0] * workers
    for f in sorted(files, key=lambda f: -weights.get(f, 1.0)):
        i = load.index(min(load))
        groups[i].append(f)
        load[i] += weights.get(f, 1.0)
    return [g for g in groups if g]


def run_side(side: str, suite: Path, files: list[str], *, python=None, select=None, weights=None,
             workers: int = 2, test_timeout: float = 120, total_timeout: float = 3600,
             extra_path=(), keep: Path | None = None, all_ids=None) -> tuple[dict, dict]:
    """Run `files` (tests_pytorch-relative) on `side`; return (results by id, collection errors).

    With `select` (ids), only those run, and an id that is never collected gets an "error" result
    saying why (its file's collection error, when there is one)."""
    python = python or sys.executable
    weights = weights or {}
    if select is not None:
        files = sorted({i.split("::")[0][len("tests_pytorch/"):] for i in select})
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"lsuite-{side}-", dir=keep))
    work = prepare.build(suite, side, tmp)
    env = _env(side, work, list(extra_path))
    if all_ids:  # Lightning's ids, to match parametrized ids that differ here (lsuite_plugin.py)
        (tmp / "all-ids").write_text("".join(i + "\n" for i in all_ids))
        env["LSUITE_ALL"] = str(tmp / "all-ids")
    deadline = time.monotonic() + total_timeout
    results, errors, threads = {}, {}, []
    for n, group in enumerate(_split(files, weights, workers)):
        group_select = None if select is None else [i for i in select if i.split("::")[0][14:] in group]
        t = threading.Thread(target=_run_group, args=(python, side, work, group, group_select, env, test_timeout,
                                                      deadline, results, errors, f"{side}-{n}"))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    for i in select or ():
        if i not in results:
            err = errors.get(i.split("::")[0])
            results[i] = {"id": i, "outcome": "error", "seconds": 0.0,
                          "message": err["message"] if err else "lightning_suite: test id not collected",
                          "text": err.get("text", "") if err else ""}
    if keep is None:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return results, errors
