"""`python -m tests.lightning_suite.record`: run the chosen suite files on Lightning, then the ids
that passed there on distengine, classify distengine's failures and write expected.json.

The Lightning side of a file is reused from expected.json while the file's key (its content,
the suite's shared helpers, our plugin, and the Lightning and torch versions) is unchanged;
`--lightning` forces it to run again. The distengine side always runs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time

from tests.lightning_suite import ENV_VAR, EXPECTED, FILES, STATE, prepare, runner, suite_root
from tests.lightning_suite.classify import apply_overrides, classify
from tests.lightning_suite.overrides import OVERRIDES

TEST_TIMEOUT = 60  # seconds per test, both sides: a test slower than that on Lightning is no use to the gate

# the Lightning side's test-only packages (pytest, and what the suite's tests import), at the
# versions distengine's own environment has, installed next to the reference Lightning
TEST_DEPS = ["pytest==9.2.0", "iniconfig==2.3.1", "pluggy==1.7.0", "cloudpickle==3.1.3", "scikit-learn==1.9.1",
             "scipy==1.17.1", "joblib==1.6.0", "threadpoolctl==3.8.0", "rich==15.0.0", "markdown-it-py==4.3.0",
             "mdurl==0.1.2", "pygments==2.21.0", "jsonargparse==4.53.0", "psutil==7.2.2", "narwhals==2.29.0"]


def lightning_side():
    """(interpreter, folder of its test packages, "pytorch-lightning X / torch Y")."""
    from tests.conformance.envs import lightning_python

    python = lightning_python("2.x")
    deps = STATE / "pl2-testdeps"
    stamp = deps / ".ready"
    if not stamp.exists() or stamp.read_text() != repr(TEST_DEPS):
        STATE.mkdir(exist_ok=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target",
                        str(deps), *TEST_DEPS], check=True)
        stamp.write_text(repr(TEST_DEPS))
    code = ("import pytorch_lightning as pl, torch; "
            "print(f'pytorch-lightning {pl.__version__} / torch {torch.__version__}')")
    versions = subprocess.run([str(python), "-W", "ignore", "-c", code], check=True, capture_output=True,
                              text=True).stdout.strip()
    return python, deps, versions


def _cache(key):
    return STATE / "lightning-cache" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")


def _load():
    return json.loads(EXPECTED.read_text()) if EXPECTED.exists() else {"files": {}, "tests": {}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lightning", action="store_true", help="run the Lightning side even where stored")
    ap.add_argument("--workers", type=int, default=2, choices=(1, 2))
    ap.add_argument("--reclassify", action="store_true",
                    help="only apply classify.py and overrides.py again to the stored failures (runs nothing)")
    ap.add_argument("--files", nargs="+", metavar="FILE", choices=FILES,
                    help="only these suite files (as in the table, e.g. trainer/test_trainer.py); the stored "
                         "results of the others are kept")
    args = ap.parse_args(argv)
    if args.reclassify:
        return _reclassify()
    files = args.files or FILES
    suite = suite_root()
    if suite is None:
        print(f"Lightning's test suite not found: set {ENV_VAR} to the folder holding tests_pytorch/ and demos/")
        return 2
    old = _load()
    python, deps, versions = lightning_side()
    deps_key = hashlib.sha256(repr(TEST_DEPS).encode()).hexdigest()[:8]
    keys = {f: f"{prepare.content_key(suite, f)}|{versions}|deps {deps_key}" for f in FILES}
    stale = [f for f in files if args.lightning or old["files"].get(f, {}).get("key") != keys[f]]
    t0 = time.monotonic()
    light = {i: {"outcome": r["lightning"], "seconds": r.get("lightning_seconds", 0.0)}
             for i, r in old["tests"].items() if i.split("::")[0][14:] in files and i.split("::")[0][14:] not in stale}
    light_errors = {}
    for f in list(stale):
        cached = _cache(keys[f])
        if cached.exists() and not args.lightning:
            got = json.loads(cached.read_text())
            light.update(got["results"])
            light_errors.update(got["errors"])
            stale.remove(f)
    if stale:
        print(f"Lightning side: {len(stale)} file(s) to run", flush=True)
        weights = {f: (suite / "tests_pytorch" / f).stat().st_size for f in stale}
        res, errs = runner.run_side("lightning", suite, stale, python=python, extra_path=[str(deps)],
                                    weights=weights, workers=args.workers, test_timeout=TEST_TIMEOUT,
                                    keep=STATE / "runs")
        light.update(res)
        light_errors.update(errs)
        for f in stale:  # kept per file, so a record that stops later does not run Lightning again
            node = f"tests_pytorch/{f}"
            _cache(keys[f]).parent.mkdir(parents=True, exist_ok=True)
            _cache(keys[f]).write_text(json.dumps({
                "results": {i: {"outcome": r["outcome"], "seconds": r.get("seconds", 0.0)} for i, r in res.items()
                            if i.split("::")[0] == node},
                "errors": {k: v for k, v in errs.items() if k == node}}))
    t1 = time.monotonic()
    passing = sorted(i for i, r in light.items() if r["outcome"] == "passed")
    print(f"Lightning side: {t1 - t0:.0f} s; distengine side: {len(passing)} test(s)", flush=True)
    weights = {}
    for i in passing:
        f = i.split("::")[0][14:]
        weights[f] = weights.get(f, 0.0) + 2.0 + light[i].get("seconds", 0.0)
    de, _ = runner.run_side("distengine", suite, files, select=passing, weights=weights, workers=args.workers,
                            test_timeout=TEST_TIMEOUT, keep=STATE / "runs", all_ids=sorted(light))
    t2 = time.monotonic()
    data = _compose(old, keys, light, light_errors, de, versions)
    if files != FILES:  # the other files' stored entries stay as they were
        data["files"].update({f: e for f, e in old["files"].items() if f not in files})
        data["tests"].update({i: e for i, e in old["tests"].items() if i.split("::")[0][14:] not in files})
    EXPECTED.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    _debug(de)
    n_pass = sum(1 for r in data["tests"].values() if r.get("distengine") == "passed")
    print(f"distengine side: {t2 - t1:.0f} s; {n_pass}/{len(passing)} pass; wrote {EXPECTED}")
    return 0


def _compose(old, keys, light, light_errors, de, versions):
    files = {}
    for f in FILES:
        prev = old["files"].get(f, {})
        err = light_errors.get(f"tests_pytorch/{f}")
        files[f] = {"key": keys[f], "lightning_collect_error": err["message"][:300] if err else
                    prev.get("lightning_collect_error") if prev.get("key") == keys[f] else None}
    tests = {}
    for i, r in sorted(light.items()):
        entry = {"lightning": r["outcome"], "lightning_seconds": round(r.get("seconds", 0.0), 2)}
        if i in de:
            d = de[i]
            entry["distengine"] = d["outcome"]
            entry["seconds"] = round(d.get("seconds", 0.0), 2)
            if d["outcome"] != "passed":
                cls, cause = classify(d)
                cls, cause, reason = apply_overrides(i, cls, cause, OVERRIDES)
                entry.update({"class": cls, "cause": cause, "message": (d.get("message") or "")[:300]})
                if reason:
                    entry["reason"] = reason
        tests[i] = entry
    return {"lightning": versions, "files": files, "tests": tests,
            "note": "written by `python -m tests.lightning_suite.record`; see docs/incoming/gate.md"}


def _reclassify() -> int:
    data = _load()
    for test_id, entry in data["tests"].items():
        if entry.get("class"):
            cls, cause = classify({"message": entry["message"]})
            cls, cause, reason = apply_overrides(test_id, cls, cause, OVERRIDES)
            entry.update({"class": cls, "cause": cause})
            entry.pop("reason", None)
            if reason:
                entry["reason"] = reason
    EXPECTED.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"reclassified the stored failures in {EXPECTED}")
    return 0


def _debug(de):
    """The full failure texts of the distengine side, for whoever fixes them (not committed)."""
    out = STATE / "last-distengine-failures.txt"
    with open(out, "w") as f:
        for i, r in sorted(de.items()):
            if r["outcome"] != "passed":
                f.write(f"==== {i} [{r['outcome']}]\n{r.get('text') or r.get('message')}\n\n")


if __name__ == "__main__":
    sys.exit(main())
