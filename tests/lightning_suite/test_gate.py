"""The Lightning-suite gate: Lightning's own tests that pass on both sides must keep passing.

expected.json (written by `python -m tests.lightning_suite.record`) holds, per test id of the
chosen files, the outcome on real pytorch-lightning and on distengine. The gate reruns on
distengine every id that passed on Lightning: one that passed on distengine when recorded and
fails now fails the gate (listed with its class); one that failed then and passes now is
reported (a warning and a line on stdout), not a failure: run `record` to take it in. To keep
the gate fast, an id that failed on distengine taking longer than RECHECK_S is not rerun (only
`record` looks at it again).
"""
from __future__ import annotations

import json
import warnings

import pytest

from tests.lightning_suite import ENV_VAR, EXPECTED, FILES, prepare, runner, suite_root
from tests.lightning_suite.classify import classify
from tests.lightning_suite.overrides import OVERRIDES

RECHECK_S = 3.0
_SKIP = f"Lightning's test suite not found: set {ENV_VAR} to the folder holding tests_pytorch/ and demos/"


def _data():
    return json.loads(EXPECTED.read_text())


def test_expected_json_matches_the_file_list():
    data = _data()
    assert sorted(data["files"]) == sorted(FILES), \
        "expected.json was recorded for other files: run `python -m tests.lightning_suite.record`"
    files = {i.split("::")[0][len("tests_pytorch/"):] for i in data["tests"]}
    assert files <= set(FILES), f"expected.json has tests of files no longer chosen: {sorted(files - set(FILES))}"
    for test_id, r in data["tests"].items():
        if r.get("distengine") not in (None, "passed"):
            assert r.get("class") in ("A", "B", "C") and r.get("cause"), f"{test_id}: failure without a class"
    for pattern, cls, reason in OVERRIDES:
        assert cls in ("A", "B", "C") and reason.strip(), f"override {pattern}: needs a class and a reason"
    suite = suite_root()
    if suite is None:
        pytest.skip(_SKIP)
    stale = [f for f in FILES if data["files"][f]["key"].split("|")[0] != prepare.content_key(suite, f)]
    assert not stale, f"the suite's files changed since recording: {stale}; " \
        "run `python -m tests.lightning_suite.record`"


def test_docs_table_is_current():
    """docs/lightning-tests.md shows the table of the committed expected.json."""
    from tests.lightning_suite import table

    doc = table.DOC.read_text()
    assert table.spliced(doc, table.render(_data())) == doc, \
        "docs/lightning-tests.md is stale: run `python -m tests.lightning_suite.table --write`"


@pytest.mark.slow
def test_lightning_suite_gate():
    suite = suite_root()
    if suite is None:
        pytest.skip(_SKIP)
    data = _data()
    chosen = sorted(i for i, r in data["tests"].items() if r["lightning"] == "passed" and (
        r.get("distengine") == "passed" or r.get("seconds", 0.0) <= RECHECK_S))
    results, _ = runner.run_side("distengine", suite, FILES, select=chosen, workers=2, test_timeout=60,
                                 total_timeout=900, all_ids=sorted(data["tests"]))
    regressions, fixed = [], []
    for test_id in chosen:
        was, now = data["tests"][test_id].get("distengine"), results[test_id]
        if was == "passed" and now["outcome"] != "passed":
            cls, cause = classify(now)
            first = (now.get("message") or "").splitlines()[0][:160] if now.get("message") else ""
            regressions.append(f"{test_id} [{cls}: {cause}] {now['outcome']}: {first}")
        elif was != "passed" and now["outcome"] == "passed":
            fixed.append(test_id)
    if fixed:
        note = f"{len(fixed)} suite test(s) now pass on distengine (run `python -m tests.lightning_suite.record`):"
        print("\n" + note + "\n  " + "\n  ".join(fixed))
        warnings.warn(f"{note} {', '.join(fixed[:20])}{' ...' if len(fixed) > 20 else ''}", stacklevel=1)
    assert not regressions, f"{len(regressions)} Lightning suite test(s) no longer pass on distengine:\n" + \
        "\n".join(regressions)
