"""The launcher's front: argument parsing, input checks, reports, debug mode. No torch ranks."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from distengine.launch import cli
from distengine.launch.config import (
    UsageError,
    parse_launch_args,
    rank_environment,
    validate,
    visible_gpus,
)
from distengine.launch.report import (
    RankOutcome,
    attempt_text,
    describe_exit,
    extract_error,
    format_summary,
    last_words,
    stack_top,
)
from tests.launcher.util import CONSOLE, LAUNCH, ROOT, SCRIPTS, clean_env


def test_help_answers_without_importing_torch():
    code = ("import sys\nfrom distengine.launch.cli import main\n"
            "try:\n    main(['launch', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), timeout=30)
    assert out.returncode == 0, out.stderr
    assert "--max-restarts" in out.stdout and "--all-ranks-console" in out.stdout
    assert out.stdout.strip().endswith("NO-TORCH")
    assert time.monotonic() - t0 < 10  # importing torch alone takes several seconds here
    top = subprocess.run(CONSOLE + ["--help"], capture_output=True, text=True, env=clean_env(), timeout=30)
    assert top.returncode == 0 and "launch" in top.stdout and "slurm" in top.stdout


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["--cpus", "2", "no_such_script.py"], "script 'no_such_script.py' does not exist"),
    (["--cpus", "0", "{marker}"], "--cpus 0: need at least 1 process"),
    (["--gpus", "4", "{marker}"], "--gpus 4 asks for 4 GPUs but this machine has 0"),
    (["--gpus", "0,2", "{marker}"], "GPU index 0 does not exist"),
    (["--cpus", "2", "--master-port", "{port}", "{marker}"], "is already in use"),
    (["--cpus", "1", "--nnodes", "2", "{marker}"], "needs --master-addr"),
    (["--cpus", "1", "--nnodes", "2", "--node-rank", "2", "--master-addr", "127.0.0.1", "{marker}"],
     "--node-rank 2 must be in 0..1"),
    (["--cpus", "2", "--max-restarts", "-1", "{marker}"], "--max-restarts -1"),
    (["--cpus", "2", "--bogus-flag", "{marker}"], "unrecognized arguments: --bogus-flag"),
    (["--cpus", "2", "-m", "no_such_module_xyz"], "module 'no_such_module_xyz' not found"),
])
def test_bad_input_is_one_line_exit_2_and_starts_nothing(tmp_path, busy_port, args, message):
    marker = tmp_path / "ran"
    script = tmp_path / "marker.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    argv = [a.format(marker=script, port=busy_port) for a in args]
    t0 = time.monotonic()
    out = subprocess.run(LAUNCH + argv, capture_output=True, text=True, env=clean_env(), cwd=tmp_path, timeout=30)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert message in lines[0] and lines[0].startswith("python -m distengine.launch: error: ")
    assert not marker.exists()
    assert time.monotonic() - t0 < 10  # answered before importing torch


def test_every_flag_reads_its_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTENGINE_CPUS", "3")
    monkeypatch.setenv("DISTENGINE_MAX_RESTARTS", "2")
    monkeypatch.setenv("DISTENGINE_LOG_DIR", str(tmp_path))
    monkeypatch.setenv("DISTENGINE_TIMEOUT", "7.5")
    monkeypatch.setenv("DISTENGINE_ALL_RANKS_CONSOLE", "1")
    monkeypatch.setenv("DISTENGINE_NNODES", "2")
    monkeypatch.setenv("DISTENGINE_NODE_RANK", "1")
    monkeypatch.setenv("DISTENGINE_MASTER_ADDR", "10.1.2.3")
    monkeypatch.setenv("DISTENGINE_MASTER_PORT", "29999")
    opts = parse_launch_args(["train.py", "--lr", "1"])
    assert (opts.cpus, opts.max_restarts, opts.log_dir, opts.timeout) == (3, 2, str(tmp_path), 7.5)
    assert opts.all_ranks_console and opts.nnodes == "2" and opts.node_rank == 1
    assert (opts.master_addr, opts.master_port) == ("10.1.2.3", 29999)
    assert opts.script_args == ["--lr", "1"]
    # The command line wins, and a device flag on it silences the other one's variable.
    opts = parse_launch_args(["--gpus", "2", "--max-restarts", "0", "train.py"])
    assert (opts.gpus, opts.cpus, opts.max_restarts) == ("2", None, 0)
    monkeypatch.setenv("DISTENGINE_DEBUG", "maybe")
    with pytest.raises(UsageError, match="DISTENGINE_DEBUG"):
        parse_launch_args(["train.py"])


def test_script_arguments_pass_through_untouched():
    opts = parse_launch_args(["--cpus", "2", "train.py", "--cpus", "5", "-m", "x", "--", "--help"])
    assert opts.script == "train.py" and opts.cpus == 2
    assert opts.script_args == ["--cpus", "5", "-m", "x", "--", "--help"]
    opts = parse_launch_args(["-m", "pkg.train", "--epochs", "1"])
    assert opts.module and opts.script == "pkg.train" and opts.script_args == ["--epochs", "1"]


def test_gpu_selection_maps_through_cuda_visible_devices(monkeypatch, tmp_path):
    assert visible_gpus({}, physical=4) == ["0", "1", "2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "3,1"}, physical=4) == ["3", "1"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,2"}, physical=4) == ["1"]  # CUDA stops at -1
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, physical=4) == []
    script = tmp_path / "t.py"
    script.write_text("")
    monkeypatch.setattr("distengine.launch.config.physical_gpu_count", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    monkeypatch.setattr("distengine.launch.config.physical_gpu_count", lambda: 8)
    opts = parse_launch_args(["--gpus", "0,2", str(script)])
    validate(opts)
    assert (opts.nproc, opts.accelerator, opts.cuda_visible_devices) == (2, "gpu", "4,6")
    assert rank_environment(opts, {})["CUDA_VISIBLE_DEVICES"] == "4,6"
    opts = parse_launch_args(["--gpus", "3", str(script)])
    validate(opts)
    assert (opts.nproc, opts.cuda_visible_devices) == (3, "4,5,6")
    with pytest.raises(UsageError, match="GPU index 4 does not exist"):
        validate(parse_launch_args(["--gpus", "1,4", str(script)]))


def test_rank_environment_single_node_is_loopback_and_user_settings_win(tmp_path):
    script = tmp_path / "t.py"
    script.write_text("")
    opts = parse_launch_args(["--cpus", "2", "--timeout", "12", str(script)])
    sock = validate(opts)
    try:
        assert sock.getsockname()[0] == "127.0.0.1" and opts.master_addr == "127.0.0.1"
        env = rank_environment(opts, {})
        assert env["DISTENGINE_ACCELERATOR"] == "cpu" and env["DISTENGINE_TIMEOUT"] == "12"
        assert env["PYTHONFAULTHANDLER"] == "1" and env["GLOO_SOCKET_IFNAME"] == "lo"
        env = rank_environment(opts, {"GLOO_SOCKET_IFNAME": "eth7", "OMP_NUM_THREADS": "4"})
        assert "GLOO_SOCKET_IFNAME" not in env and "OMP_NUM_THREADS" not in env
    finally:
        sock.close()
    opts = parse_launch_args(["--cpus", "1", "--nnodes", "2", "--node-rank", "1",
                              "--master-addr", "10.0.0.1", str(script)])
    assert validate(opts) is None  # node 1 hosts nothing
    assert "GLOO_SOCKET_IFNAME" not in rank_environment(opts, {})


def test_traceback_extraction_and_summary():
    log = ("some output\n[rank1]: Traceback (most recent call last):\n"
           "[rank1]:   File \"train.py\", line 3, in <module>\n[rank1]:     main()\n"
           "[rank1]: ValueError: bad batch\nmore output\n")
    exc, tb = extract_error(log)
    assert exc == "ValueError: bad batch"
    assert tb == ["Traceback (most recent call last):", '  File "train.py", line 3, in <module>', "    main()"]
    chained = ("Traceback (most recent call last):\n  File \"a.py\", line 1\nKeyError: 'x'\n\n"
               "During handling of the above exception, another exception occurred:\n\n"
               "Traceback (most recent call last):\n  File \"a.py\", line 2\nRuntimeError: wrapped\n")
    assert extract_error(chained)[0] == "RuntimeError: wrapped"
    assert extract_error("no error here\n") == (None, [])
    assert describe_exit(-9) == "killed by signal SIGKILL (9)"
    assert describe_exit(143) == "exit code 143 (after SIGTERM)"
    dump = ("Fatal Python error: Aborted\n\nCurrent thread 0x1 (most recent call first):\n"
            "  File \"t.py\", line 9 in wait\n")
    assert stack_top(dump) == 'File "t.py", line 9 in wait'


def test_summary_blames_the_real_failure_not_the_peer_that_noticed(tmp_path):
    peer = tmp_path / "rank_0.log"
    peer.write_text("Traceback (most recent call last):\n  File \"t.py\", line 5\n"
                    "RuntimeError: [gloo] Connection closed by peer [127.0.0.1]:1\n")
    real = tmp_path / "rank_1.log"
    real.write_text("Traceback (most recent call last):\n  File \"t.py\", line 7, in step\nValueError: nan loss\n")
    text = format_summary([RankOutcome(0, 1, 10, root_cause=True, log_path=str(peer)),
                           RankOutcome(1, 1, 11, root_cause=True, log_path=str(real))],
                          attempts=1, log_dir=str(tmp_path))
    first_line = text.splitlines()[0]
    assert "rank 1 exit code 1" in first_line
    assert text.index("ValueError: nan loss") < text.index("Connection closed by peer")
    # the peer failed on its own, but only because rank 1 went: one line, its traceback in its log
    assert "  rank 0 (failed, pid 10): exit code 1\n    it had stopped with RuntimeError: [gloo] Connection " \
           "closed by peer [127.0.0.1]:1 (because rank 1 failed)\n" in text, text
    killed = format_summary([RankOutcome(1, -9, 11, root_cause=True)], attempts=2, log_dir=None)
    assert "after 2 attempts: rank 1 killed by signal SIGKILL (9)" in killed


def test_summary_names_the_rank_whose_error_came_first_when_two_fail_in_one_poll(tmp_path):
    """Under load both ranks of a failed job can have ended by the launcher's next poll; the rank
    that failed first is named, whatever the other rank's error says (found by a loaded run:
    rank 0's lost-peer error, not matched as a consequence, was named instead of rank 1's)."""
    peer = tmp_path / "rank_0.log"
    peer.write_text("Traceback (most recent call last):\n  File \"t.py\", line 3, in <module>\n"
                    "RuntimeError: a message no heuristic knows\n")
    real = tmp_path / "rank_1.log"
    real.write_text("Traceback (most recent call last):\n  File \"t.py\", line 7, in step\nValueError: boom\n")
    text = format_summary([RankOutcome(0, 1, 10, root_cause=True, log_path=str(peer), error_written=200.5),
                           RankOutcome(1, 1, 11, root_cause=True, log_path=str(real), error_written=200.1)],
                          attempts=1, log_dir=str(tmp_path))
    assert text.splitlines()[0].endswith("rank 1 exit code 1")
    assert text.index("ValueError: boom") < text.index("a message no heuristic knows")
    unknown = format_summary([RankOutcome(0, 1, 10, root_cause=True, log_path=str(peer)),
                              RankOutcome(1, 1, 11, root_cause=True, log_path=str(real))], attempts=1, log_dir=None)
    assert unknown.splitlines()[0].endswith("rank 0 exit code 1")  # no times: the lowest rank


def test_report_pieces_skip_interpreter_pseudo_frames_and_earlier_attempts():
    shutdown = ("Fatal Python error: Aborted\n\nCurrent thread 0x1 (most recent call first):\n"
                "  Garbage-collecting\n  <no Python frame>\n\nExtension modules: torch._C\n")
    assert stack_top(shutdown) is None  # not "was at: Garbage-collecting"
    log = ("[distengine] attempt 1: restart 0\nTraceback (most recent call last):\n  File \"t.py\"\n"
           "ValueError: old\n[distengine] attempt 2: restart 1\nstep 3\n")
    assert attempt_text(log) == "[distengine] attempt 2: restart 1\nstep 3\n"
    abort = ("step 3\nterminate called after throwing an instance of 'gloo::EnforceNotMet'\n"
             "  what():  collective mismatch\n[distengine] rank 0 failed\nFatal Python error: Aborted\n\n"
             "Thread 0x1 (most recent call first):\n  File \"t.py\", line 9 in step\n")
    assert last_words(abort) == ["step 3", "terminate called after throwing an instance of 'gloo::EnforceNotMet'",
                                 "  what():  collective mismatch", "Fatal Python error: Aborted"]


def test_slurm_subcommand_is_dispatched_lazily(monkeypatch, capsys):
    import types

    seen = []
    fake = types.ModuleType("distengine.slurm.cli")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "distengine.slurm.cli", fake)
    assert cli.main(["slurm", "submit", "--x"]) == 0
    assert seen == [["submit", "--x"]]
    monkeypatch.setitem(sys.modules, "distengine.slurm.cli", None)  # as if it were not installed
    assert cli.main(["slurm", "submit"]) == 2
    assert "distengine.slurm.cli" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == 2
    assert cli.main([]) == 2


DEBUG_SCRIPT = """
import json, os, sys
with open(sys.argv[1], "w") as f:
    json.dump({"pid": os.getpid(), "argv": sys.argv, "name": __name__,
               "env": {k: os.environ.get(k) for k in ("DISTENGINE_DEBUG", "CUDA_LAUNCH_BLOCKING",
                                                      "DISTENGINE_ACCELERATOR", "RANK", "WORLD_SIZE")}}, f)
if sys.argv[2] == "raise":
    def inner():
        raise KeyError("from the script")
    inner()
sys.exit(int(sys.argv[2]))
"""


def test_debug_mode_runs_the_script_in_the_launcher_process(tmp_path):
    script = tmp_path / "dbg.py"
    script.write_text(DEBUG_SCRIPT)
    report = tmp_path / "report.json"
    env = clean_env(RANK="3", WORLD_SIZE="8")  # a leftover job environment must not leak in
    proc = subprocess.Popen(CONSOLE + ["launch", "--debug", "--cpus", "2", str(script), str(report), "3"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    import json

    data = json.loads(report.read_text())
    assert data["pid"] == proc.pid  # no child process: the launcher itself ran the script
    assert data["name"] == "__main__" and data["argv"] == [str(script), str(report), "3"]
    assert data["env"] == {"DISTENGINE_DEBUG": "1", "CUDA_LAUNCH_BLOCKING": "1", "DISTENGINE_ACCELERATOR": "cpu",
                           "RANK": None, "WORLD_SIZE": None}
    out = subprocess.run(LAUNCH + ["--debug", str(script), str(report), "raise"], env=clean_env(),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    tb = out.stderr[out.stderr.index("Traceback"):]
    assert "KeyError: 'from the script'" in tb and "in inner" in tb
    assert "launch/" not in tb and "runpy" not in tb  # the trace starts in the user's script
    assert os.path.basename(str(script)) in tb.splitlines()[1]


def test_a_debug_run_that_relaunches_itself_stops_with_one_error(tmp_path):
    # What Trainer(devices=2) does in a plain run; inside --debug it must not recurse.
    script = tmp_path / "relaunch.py"
    script.write_text("import subprocess, sys\n"
                      "cmd = [sys.executable, '-m', 'distengine.launch', '--cpus', '2', __file__]\n"
                      "sys.exit(subprocess.call(cmd))\n")
    out = subprocess.run(LAUNCH + ["--debug", "--cpus", "2", str(script)], env=clean_env(), capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.count("tried to launch itself again from inside a --debug run") == 1


_DEBUG_TWO_DEVICES = """
import json, os, sys
import torch
from torch.utils.data import DataLoader, TensorDataset
import distengine as de
from tests.core.models import Regressor
data = DataLoader(TensorDataset(torch.randn(8, 6), torch.randn(8, 1)), batch_size=4)
for _ in range(2):  # two Trainers, one line
    t = de.Trainer(accelerator="cpu", devices=2, logger=False, enable_progress_bar=False,
                   enable_checkpointing=False, enable_model_summary=False, max_epochs=1)
    t.fit(Regressor(), data)
json.dump({"pid": os.getpid(), "world_size": t.world_size, "step": t.global_step}, open(sys.argv[1], "w"))
"""


def test_trainer_devices_2_under_debug_runs_one_process_and_says_so_once(tmp_path):
    script = tmp_path / "two.py"
    script.write_text(_DEBUG_TWO_DEVICES)
    report = tmp_path / "report.json"
    proc = subprocess.Popen(CONSOLE + ["launch", "--debug", str(script), str(report)], cwd=ROOT,
                            env=clean_env(PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    import json

    data = json.loads(report.read_text())
    assert data == {"pid": proc.pid, "world_size": 1, "step": 2}  # in the launcher's process, rank 0 of 1
    said = [line for line in err.splitlines() if "runs as 1 process" in line]
    assert said == ["distengine: --debug: Trainer(devices=2) runs as 1 process here (rank 0 of 1); "
                    "without --debug it starts 2"], err


NO_SPAWN = [sys.executable, str(SCRIPTS / "no_spawn.py")]
_TRAIN_999 = """
import torch
from torch.utils.data import DataLoader, TensorDataset
import distengine as de
from tests.core.models import Regressor
data = DataLoader(TensorDataset(torch.randn(8, 6), torch.randn(8, 1)), batch_size=4)
de.Trainer(accelerator="cpu", devices={devices}, logger=False, enable_progress_bar=False).fit(Regressor(), data)
"""


def test_cpus_beyond_the_cores_is_one_line_and_starts_nothing(tmp_path):
    record = tmp_path / "started"
    script = tmp_path / "marker.py"
    script.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    # any process the launcher tried to start would be recorded (and refused) by no_spawn
    out = subprocess.run(NO_SPAWN + [str(record), "launch", "--cpus", "999", str(script)], capture_output=True,
                         text=True, env=clean_env(), cwd=tmp_path, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "--cpus 999 asks for 999 processes but this machine gives this job" in lines[0]
    assert "--oversubscribe" in lines[0] and "DISTENGINE_OVERSUBSCRIBE=1" in lines[0]
    assert not record.exists() and not (tmp_path / "ran").exists()


def test_trainer_devices_beyond_the_cores_is_refused_before_any_process(tmp_path):
    record = tmp_path / "started"
    script = tmp_path / "train999.py"
    script.write_text(_TRAIN_999.format(devices=999))
    env = clean_env(PYTHONPATH=str(ROOT))
    out = subprocess.run(NO_SPAWN + [str(record), str(script)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("distengine.utilities.exceptions.ConfigError: Trainer(devices=999) on CPU would start "
                           "999 processes"), out.stderr  # ConfigError: a ValueError and a MisconfigurationException
    assert "DISTENGINE_OVERSUBSCRIBE=1" in last
    assert not record.exists(), record.read_text()  # no launcher, no rank: nothing was started


def test_oversubscription_is_accepted_when_asked_for(monkeypatch, tmp_path):
    import distengine as de
    from distengine.distributed.env import usable_cpu_count

    script = tmp_path / "t.py"
    script.write_text("")
    more = usable_cpu_count() + 1  # one process more than the cores; nothing is started here
    with pytest.raises(UsageError, match=f"--cpus {more} asks for {more} processes"):
        validate(parse_launch_args(["--cpus", str(more), str(script)]))
    with pytest.raises(ValueError, match=f"Trainer\\(devices={more}\\) on CPU would start"):
        de.Trainer(accelerator="cpu", devices=more, logger=False)
    for argv, env in ((["--oversubscribe"], None), ([], "1")):
        if env is None:
            monkeypatch.delenv("DISTENGINE_OVERSUBSCRIBE", raising=False)
        else:
            monkeypatch.setenv("DISTENGINE_OVERSUBSCRIBE", env)
        opts = parse_launch_args([*argv, "--cpus", str(more), str(script)])
        sock = validate(opts)
        sock.close()
        assert (opts.nproc, opts.accelerator, opts.oversubscribe) == (more, "cpu", True)
    # the Trainer (which re-runs the script under the launcher, environment included) follows the variable
    assert de.Trainer(accelerator="cpu", devices=more, logger=False).num_devices == more
    monkeypatch.setenv("DISTENGINE_OVERSUBSCRIBE", "perhaps")
    with pytest.raises(UsageError, match="DISTENGINE_OVERSUBSCRIBE='perhaps' is not a boolean"):
        parse_launch_args(["--cpus", "1", str(script)])
    # up to the cores needs nothing
    monkeypatch.delenv("DISTENGINE_OVERSUBSCRIBE")
    opts = parse_launch_args(["--cpus", str(usable_cpu_count()), str(script)])
    validate(opts).close()


@pytest.mark.parametrize("environment, message", [
    (dict(MASTER_ADDR="8.8.8.8", MASTER_PORT="abc"), "MASTER_PORT='abc' in the environment is not a port number"),
    (dict(MASTER_PORT="70000"), "MASTER_PORT='70000' in the environment is not a port number (1-65535)"),
    (dict(MASTER_PORT="0"), "MASTER_PORT='0' in the environment is not a port number"),
    (dict(MASTER_ADDR="8.8.8.8"), "8.8.8.8 (from MASTER_ADDR) is not an address of this machine"),
    (dict(MASTER_ADDR="no-such-host.invalid"), "cannot resolve address 'no-such-host.invalid' (from MASTER_ADDR)"),
    (dict(MASTER_ADDR="127.0.0.1", MASTER_PORT="{port}"), "port {port} on 127.0.0.1 is already in use; choose "
                                                          "another MASTER_PORT"),
])
def test_bad_master_addr_or_port_in_the_environment_is_one_line(tmp_path, busy_port, environment, message):
    record = tmp_path / "started"
    script = tmp_path / "marker.py"
    script.write_text("")
    env = clean_env(**{k: v.format(port=busy_port) for k, v in environment.items()})
    out = subprocess.run(NO_SPAWN + [str(record), "launch", "--cpus", "2", str(script)], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message.format(port=busy_port) in lines[0], out.stderr
    assert not record.exists()


def test_master_port_and_addr_precedence(monkeypatch, tmp_path):
    script = tmp_path / "t.py"
    script.write_text("")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", "29999")
    opts = parse_launch_args(["--cpus", "1", str(script)])
    assert (opts.master_addr, opts.master_port, opts.master_port_source) == ("localhost", 29999, "MASTER_PORT")
    # the flags (and their DISTENGINE_* variables) win over the plain variables
    monkeypatch.setenv("DISTENGINE_MASTER_PORT", "29998")
    opts = parse_launch_args(["--master-addr", "127.0.0.1", "--cpus", "1", str(script)])
    assert (opts.master_addr, opts.master_port, opts.master_port_source) == ("127.0.0.1", 29998, "--master-port")
    opts = parse_launch_args(["--master-port", "0", "--cpus", "1", str(script)])
    sock = validate(opts)  # --master-port 0 still means "any free port"
    try:
        assert opts.master_port == sock.getsockname()[1] != 0 and opts.loopback_only
    finally:
        sock.close()


def test_single_node_c10d_endpoint_of_another_machine_is_refused(tmp_path, monkeypatch):
    script = tmp_path / "t.py"
    script.write_text("")
    with pytest.raises(UsageError, match=r"8\.8\.8\.8 \(from --rdzv-endpoint\) is not an address of this machine"):
        validate(parse_launch_args(["--rdzv-backend", "c10d", "--rdzv-endpoint", "8.8.8.8:29400", "--cpus", "1",
                                    str(script)]))
    monkeypatch.setenv("MASTER_ADDR", "8.8.8.8")  # the endpoint built from MASTER_ADDR says so
    with pytest.raises(UsageError, match=r"8\.8\.8\.8 \(from MASTER_ADDR\) is not an address"):
        validate(parse_launch_args(["--rdzv-backend", "c10d", "--cpus", "1", str(script)]))
    # several nodes: the endpoint is another machine's, and this agent joins it there
    opts = parse_launch_args(["--rdzv-backend", "c10d", "--rdzv-endpoint", "8.8.8.8:29400", "--nnodes", "1:2",
                              "--rdzv-id", "j", "--cpus", "1", str(script)])
    assert validate(opts) is None
