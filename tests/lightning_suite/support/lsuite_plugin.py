"""pytest plugin loaded on both sides of the Lightning-suite gate (copied into the run folder).

- LSUITE_SELECT: a file of test ids, one a line: only those run (the rest are deselected).
- LSUITE_ALL: every id the Lightning side collected, one a line. A parametrized test whose ids
  differ here (a parameter value that is a missing name gets another id) is matched to
  Lightning's ids by position when both sides have the same number of them; results are
  written under Lightning's id.
- LSUITE_EXCLUDE: fnmatch patterns of test ids, one a line, deselected on both sides.
- LSUITE_RESULTS: a JSON-lines file; one "start" record before each test and one "result"
  record after it (outcome, seconds, failure message, traceback tail), written at once, so a
  process that dies mid-test still leaves what it had done, and which test it died in.
- LSUITE_TIMEOUT: seconds per test (setup, call and teardown together). The test gets a
  `LsuiteTimeout` raised into it; one that does not return within 30 s more ends the process.
"""
import faulthandler
import fnmatch
import json
import os
import signal
import sys

import pytest

_RESULTS = os.environ["LSUITE_RESULTS"]
_SELECT = os.environ.get("LSUITE_SELECT")
_EXCLUDE = [p for p in os.environ.get("LSUITE_EXCLUDE", "").splitlines() if p]
_TIMEOUT = float(os.environ.get("LSUITE_TIMEOUT", "120"))
_ALL = os.environ.get("LSUITE_ALL")
_state = {}
_alias = {}


class LsuiteTimeout(Exception):
    pass


def _write(record):
    with open(_RESULTS, "a") as f:
        f.write(json.dumps(record) + "\n")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    _match_ids(items)
    wanted = None
    if _SELECT:
        with open(_SELECT) as f:
            wanted = {line.rstrip("\n") for line in f if line.strip()}

    def chosen(item):
        if wanted is not None and _id(item) not in wanted:
            return False
        return not any(fnmatch.fnmatchcase(item.nodeid, p) for p in _EXCLUDE)

    dropped = [item for item in items if not chosen(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if chosen(item)]
    _write({"event": "collected", "ids": [_id(item) for item in items]})


def _id(item):
    return _alias.get(item.nodeid, item.nodeid)


def _match_ids(items):
    if not _ALL:
        return
    with open(_ALL) as f:
        known = [line.rstrip("\n") for line in f if line.strip()]
    theirs, ours = {}, {}
    for i in known:
        theirs.setdefault(i.split("[")[0], []).append(i)
    for item in items:
        if not any(fnmatch.fnmatchcase(item.nodeid, p) for p in _EXCLUDE):
            ours.setdefault(item.nodeid.split("[")[0], []).append(item.nodeid)
    known = set(known)
    for func, mine in ours.items():
        other = theirs.get(func, [])
        if len(mine) == len(other) and any(i not in known for i in mine):
            _alias.update(zip(mine, other))


def pytest_collectreport(report):
    if report.failed:
        _write({"event": "collect_error", "id": report.nodeid, "message": _message(report),
                "text": _text(report)})


def _on_alarm(signum, frame):
    raise LsuiteTimeout(f"lightning_suite: test exceeded its {_TIMEOUT:.0f} s limit")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _write({"event": "start", "id": _id(item)})
    _state[item.nodeid] = {"outcome": "passed", "seconds": 0.0}
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, _TIMEOUT)
    faulthandler.dump_traceback_later(_TIMEOUT + 30, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
    record = _state.pop(item.nodeid)
    record.update(event="result", id=_id(item))
    _write(record)


def _message(report):
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message[:2000]
    if isinstance(report.longrepr, tuple):  # a skip: (file, line, reason)
        return str(report.longrepr[2])[:2000]
    return str(report.longrepr)[-2000:]


def _text(report):
    return str(report.longrepr)[-6000:]


def pytest_runtest_logreport(report):
    record = _state.get(report.nodeid)
    if record is None:
        return
    record["seconds"] += report.duration
    if record["outcome"] != "passed":
        return  # the first phase that did not pass decides
    if hasattr(report, "wasxfail"):
        record["outcome"] = "xfailed" if report.skipped else "xpassed"
    elif report.failed:
        record["outcome"] = "failed" if report.when == "call" else "error"
    elif report.skipped:
        record["outcome"] = "skipped"
    else:
        return
    record["phase"] = report.when
    record["message"] = _message(report)
    if report.failed:
        record["text"] = _text(report)
