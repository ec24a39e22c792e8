"""A run forked from the zygote (tests/zygote.py) sees what a fresh `python -W ignore SCRIPT` sees.

The conformance harness runs distengine's side of every corpus script this way, so a difference
here would be a difference in what the harness compares."""
import json
import os
import subprocess
import sys
import time

import pytest

from tests import zygote

PROBE = r'''
import atexit, ctypes, faulthandler, json, os, random, sys, warnings
import torch, torch._dynamo  # the zygote imported these: their warning filters come first
print("to stdout"); print("to stderr", file=sys.stderr)
report = {
    "name": __name__, "argv": sys.argv, "path0": sys.path[0], "cwd": os.getcwd(),
    "env": os.environ.get("PROBE_VALUE"), "c_env": ctypes.CDLL(None).getenv,
    "seed": torch.initial_seed(), "rand": torch.rand(3).tolist(), "threads": torch.get_num_threads(),
    "warnings": [(f[0], f[2].__name__) for f in warnings.filters if f[1] is None],
    "hash": hash("distengine"), "stdin": sys.stdin.read(),
    "faulthandler": faulthandler.is_enabled(), "random": random.random(),
    "main_file": sys.modules["__main__"].__file__,
}
getenv = report["c_env"]; getenv.restype = ctypes.c_char_p
report["c_env"] = getenv(b"PROBE_VALUE").decode()
atexit.register(lambda: open(os.path.join(os.getcwd(), "atexit"), "w").write("ran"))
with open(os.path.join(os.getcwd(), "report.json"), "w") as f:
    json.dump(report, f)
sys.exit(int(os.environ.get("PROBE_EXIT", "0")))
'''

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the zygote forks (Linux)")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update({"PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "PROBE_VALUE": "from the run", **extra})
    return env


def _fresh(script, folder, env):
    with open(folder / "log", "w") as log:
        code = subprocess.call([sys.executable, "-W", "ignore", str(script)], cwd=folder, env=env,
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return code


def _forked(script, folder, env, mode="script"):
    (folder / "log").touch()
    proc = zygote.zygote(sys.executable, _env()).start(str(script), str(folder), env, str(folder / "log"), mode=mode)
    return proc.wait()


def _run(how, tmp_path, name, **extra):
    folder = tmp_path / name
    folder.mkdir()
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    code = how(script, folder, _env(**extra))
    report = json.loads((folder / "report.json").read_text()) if (folder / "report.json").exists() else None
    return code, report, (folder / "log").read_text(), folder


def test_a_forked_run_sees_what_a_fresh_process_sees(tmp_path):
    code, fresh, fresh_log, fresh_dir = _run(_fresh, tmp_path, "fresh")
    code2, forked, forked_log, forked_dir = _run(_forked, tmp_path, "forked")
    assert code == code2 == 0
    for report, folder in ((fresh, fresh_dir), (forked, forked_dir)):
        assert report.pop("cwd") == str(folder)
        assert report.pop("random") is not None
        assert report.pop("seed") and report.pop("rand")  # drawn from the OS in a fresh process
        assert (folder / "atexit").read_text() == "ran"
    assert forked == fresh
    assert fresh["name"] == "__main__" and fresh["env"] == fresh["c_env"] == "from the run"
    assert fresh["threads"] == 1 and ["ignore", "Warning"] in fresh["warnings"] and fresh["stdin"] == ""
    assert "to stdout" in forked_log and "to stderr" in forked_log


def test_forked_runs_draw_their_own_random_numbers_and_report_exit_codes(tmp_path):
    _, a, _, _ = _run(_forked, tmp_path, "a")
    _, b, _, _ = _run(_forked, tmp_path, "b")
    assert a["random"] != b["random"]
    assert a["seed"] != b["seed"] and a["rand"] != b["rand"]
    code, _, _, _ = _run(_forked, tmp_path, "three", PROBE_EXIT="3")
    assert code == 3
    script = tmp_path / "raises.py"
    script.write_text("raise ValueError('from the script')\n")
    (tmp_path / "r").mkdir()
    assert _forked(script, tmp_path / "r", _env()) == 1
    assert "ValueError: from the script" in (tmp_path / "r" / "log").read_text()
    script.write_text("import time\ntime.sleep(60)\n")
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "log").touch()
    proc = zygote.zygote(sys.executable, _env()).start(str(script), str(tmp_path / "k"), _env(),
                                                       str(tmp_path / "k" / "log"))
    time.sleep(0.2)
    assert proc.poll() is None
    proc.kill()
    assert proc.wait() == -9


def test_a_rank_runs_through_the_rank_entry_point(tmp_path):
    code, report, _, _ = _run(lambda s, f, e: _forked(s, f, e, mode="rank"), tmp_path, "rank",
                              PROBE_EXIT="4", PYTHONFAULTHANDLER="1")
    assert code == 4
    assert report["argv"] == [str(tmp_path / "probe.py")] and report["faulthandler"] is True
    assert report["path0"] == str(tmp_path)


def test_a_run_that_needs_other_start_up_settings_is_refused(tmp_path):
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        zygote.zygote(sys.executable, _env()).start("x.py", str(tmp_path), _env(OMP_NUM_THREADS="2"), "log")


def test_the_ranks_of_a_job_without_a_fixed_hash_seed_hash_strings_differently(tmp_path):
    env = {k: v for k, v in _env().items() if k != "PYTHONHASHSEED"}
    script = tmp_path / "h.py"
    script.write_text("open('h', 'w').write(str(hash('distengine')))\n")
    hashes = []
    for rank in (0, 1):
        folder = tmp_path / f"rank{rank}"
        folder.mkdir()
        (folder / "log").touch()
        z = zygote.zygote(sys.executable, env, slot=rank)
        assert z.start(str(script), str(folder), env, str(folder / "log")).wait(timeout=60) == 0
        hashes.append((folder / "h").read_text())
    assert hashes[0] != hashes[1]
