"""The supported torch range, tested: the torch-sensitive tests on the oldest and newest torch.

distengine declares ``torch>=2.11,<2.15`` (pyproject.toml). The whole suite runs on the pinned
CPU build of 2.13.0 in ``.venv``; this module runs the tests that touch the parts of torch that
change between releases (FSDP2, torch.distributed.checkpoint, the elastic agent, process groups,
the loop's core) again on each torch in :data:`VERSIONS`:

    python -m tests.torch_range disk       # is there room for a whole run? (make test asks first)
    python -m tests.torch_range build      # build the environments (make test starts this early)
    python -m tests.torch_range run        # build if needed, then run SUITE on each version
    python -m tests.torch_range run --version newest -n 2   # one version (or oldest, or a number);
                                                            # the arguments after it go to pytest

Each version gets its own small virtual environment under ``.torch-range/<version>/`` (ignored
by git) that holds only that torch and its own dependencies (the registry serves these versions
as CUDA wheels, about 4.6 GB with their nvidia packages; they run on the CPU). Everything else
(distengine itself, pytest, tensorboard, ...) comes from the main ``.venv``: a ``.pth`` file adds
its site-packages *after* the range environment's own, so ``import torch`` finds the range's
torch and every other import finds the main environment's packages. A ``distengine`` console
script is written into the range environment so that the launcher tests start jobs on the same
torch.

Disk: an environment takes about 5.5 GB (:data:`ENV_GB`). ``python -m tests.torch_range disk``,
which ``make test`` runs first, says in one line what is free. When the environments still to
build and the suite's own files (:data:`SUITE_GB`) do not fit at once, but one environment at a
time does, the environments are built one at a time, each when its run starts, and removed after
the run (:data:`ONE_AT_A_TIME`; the newest's run waits for the oldest's). When not even that fits,
the run stops before any work: a full disk half-way through shows up as hundreds of unrelated
errors and a failed pip install instead.

``PIP_FIND_LINKS`` is emptied for these installs: the machine's local wheel folder holds the
2.13 CPU build, which pip would otherwise prefer for a pinned version it has.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = Path(os.environ.get("DISTENGINE_TORCH_RANGE_DIR", REPO / ".torch-range"))

#: the oldest and the newest supported torch; the pinned 2.13.0 in between runs the whole suite
VERSIONS = ("2.11.0", "2.14.1")

#: what each version leaves out: the oldest (the GPU image's torch, where FSDP broke before) runs
#: every torch-sensitive test; the newest leaves out the tests marked slow (soaks, chaos, the
#: longest resume and 4-rank runs), which repeat paths its fast tests already take on that torch
DESELECT = {"2.11.0": (), "2.14.1": ("-m", "not slow")}

#: the torch-sensitive tests: FSDP2 and sharded/async checkpoints, checkpoint I/O and resume, the
#: launcher on torch's elastic agent, 2-rank gloo process groups, the GPU paths checked on CPU,
#: the private-torch-name guard, and the loop's parity with a hand-written loop
SUITE = (
    "tests/fsdp",
    "tests/checkpoint",
    "tests/launcher",
    "tests/distributed",
    "tests/unit",
    "tests/gpu",
    "tests/core/test_parity.py",
    "tests/core/test_flags.py",
)


#: disk an environment takes, in GB (2.14.1: 5.4 GB, 2.11.0: 4.6 GB, nearly all of it torch's
#: CUDA libraries), and what the suite itself writes at most (temporary folders, compile caches)
ENV_GB = 6.0
SUITE_GB = 3.0


def _ready(version: str) -> bool:
    stamp = ROOT / version / ".ready"
    return stamp.exists() and stamp.read_text() == _recipe(version)


#: present when the disk holds only one environment at a time (written by ``disk``): each run
#: builds its environment under an exclusive lock on this file and removes it afterwards
ONE_AT_A_TIME = ROOT / "one-at-a-time"


def disk_shortfall(free_gb: float, to_build: int, where: str) -> str | None:
    """The one-line reason the run cannot fit in ``free_gb`` even with its environments built one
    at a time, or ``None`` if it fits that way."""
    need = min(to_build, 1) * ENV_GB + SUITE_GB
    if free_gb >= need:
        return None
    build = f"one torch-range environment at a time (about {ENV_GB:g} GB) and " if to_build else ""
    return (f"only {free_gb:.1f} GB free on {where}; the test run needs at least {need:g} GB: {build}"
            f"{SUITE_GB:g} GB for the suite's files. Free some space, or set DISTENGINE_TORCH_RANGE_DIR "
            "to a folder on a larger disk.")


def check_disk(versions=VERSIONS) -> int:
    """Print the free disk; 1 (with the reason) when the run will not fit, before any work. When
    the environments still to build fit only one at a time, say so and mark it (:data:`ONE_AT_A_TIME`)."""
    ROOT.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(ROOT).free / 1e9
    to_build = sum(not _ready(v) for v in versions)
    problem = disk_shortfall(free_gb, to_build, str(ROOT))
    if problem:
        print(f"make test: {problem}", file=sys.stderr, flush=True)
        return 1
    if free_gb >= to_build * ENV_GB + SUITE_GB:
        ONE_AT_A_TIME.unlink(missing_ok=True)
        print(f"disk: {free_gb:.1f} GB free on {ROOT} ({to_build} torch-range environment"
              f"{'s' if to_build != 1 else ''} to build)", flush=True)
    else:
        ONE_AT_A_TIME.touch()
        print(f"disk: {free_gb:.1f} GB free on {ROOT}, too little for {to_build} torch-range environments "
              f"(about {ENV_GB:g} GB each) at once: each is built when its run starts and removed after it",
              flush=True)
    return 0


@contextlib.contextmanager
def _disk_turn(version: str):
    """In one-at-a-time mode, hold the disk for ``version``'s environment while it is built and
    used, and remove it afterwards; otherwise do nothing."""
    if not ONE_AT_A_TIME.exists():
        yield
        return
    with open(ONE_AT_A_TIME, "a") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)  # the other version's run waits here until this one is gone
        try:
            yield
        finally:
            shutil.rmtree(ROOT / version, ignore_errors=True)


def _main_site() -> str:
    return sysconfig.get_paths()["purelib"]


def _recipe(version: str) -> str:
    return f"torch=={version}; site={_main_site()}"


def range_python(version: str, log=None) -> Path:
    """The interpreter of the environment for torch ``version``, built if needed."""
    venv = ROOT / version
    python = venv / "bin" / "python"
    stamp = venv / ".ready"
    ROOT.mkdir(parents=True, exist_ok=True)
    with open(ROOT / f"{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder even when make's background build is running
        if stamp.exists() and stamp.read_text() == _recipe(version):
            return python
        # the space of a removed environment can take a moment to come back (one at a time): a
        # process the last run started may still be mapping its libraries for a few seconds
        deadline = time.monotonic() + (60 if ONE_AT_A_TIME.exists() else 0)
        while problem := disk_shortfall(shutil.disk_usage(ROOT).free / 1e9, 1, str(ROOT)):
            if time.monotonic() > deadline:
                raise SystemExit(f"tests.torch_range: cannot build the torch-{version} environment: {problem}")
            time.sleep(1)
        out = log or open(ROOT / f"{version}.log", "w")
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            env = dict(os.environ, PIP_FIND_LINKS="")
            # --no-cache-dir: a downloaded CUDA build would stay in pip's cache too (GBs)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-cache-dir", f"torch=={version}"],
                           check=True, stdout=out, stderr=subprocess.STDOUT, env=env)
            site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip()
            # processed after the environment's own packages: torch resolves here, the rest there
            Path(site, "zz_distengine_main_venv.pth").write_text(
                f"import site; site.addsitedir({_main_site()!r})\n")
            script = venv / "bin" / "distengine"
            script.write_text(f"#!{python}\nimport sys\nfrom distengine.launch.cli import main\n"
                              "sys.exit(main())\n")
            script.chmod(0o755)
            got = subprocess.run([str(python), "-c", "import torch, distengine; print(torch.__version__)"],
                                 check=True, capture_output=True, text=True).stdout.strip()
            if got.split("+")[0] != version:
                raise RuntimeError(f"the torch-{version} environment imports torch {got}")
        finally:
            if log is None:
                out.close()
        stamp.write_text(_recipe(version))
    return python


def _default_sigint() -> None:  # in the child, before exec
    # `make test` starts this run as a background job, which a non-interactive shell starts with
    # SIGINT ignored (inherited through exec): give pytest and its processes Python's default back
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(versions=VERSIONS, suite=SUITE, extra=()) -> int:
    """Run ``suite`` on each torch in ``versions``; the exit status is non-zero if any failed."""
    failed = []
    for version in versions:
        start = time.monotonic()
        with _disk_turn(version):
            python = range_python(version)
            print(f"\n=== torch {version}: {' '.join(suite)}", flush=True)
            # the exit soak runs its job 4 times per torch here (8 in the main suite)
            env = dict(os.environ, DISTENGINE_SOAK_RUNS=os.environ.get("DISTENGINE_SOAK_RUNS", "4"))
            # its own temporary folder: the main suite's pytest may be running beside it (make test)
            code = subprocess.call([str(python), "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider",
                                    f"--basetemp={ROOT / ('tmp-' + version)}", "--durations=15",
                                    *DESELECT.get(version, ()), *suite, *extra], cwd=REPO, env=env,
                                   preexec_fn=_default_sigint)
        print(f"=== torch {version}: exit {code} in {time.monotonic() - start:.0f}s", flush=True)
        if code != 0:
            failed.append(version)
    if failed:
        print(f"torch range: the torch-sensitive tests failed on {', '.join(failed)}", flush=True)
        return 1
    return 0


def main(argv: list[str]) -> int:
    what, rest = (argv[0], argv[1:]) if argv else ("run", [])
    versions = []
    while rest[:1] == ["--version"] and len(rest) > 1:
        rest[1] = {"oldest": VERSIONS[0], "newest": VERSIONS[-1]}.get(rest[1], rest[1])
        if rest[1] not in VERSIONS:
            print(f"tests.torch_range: {rest[1]} is not a tested version; choose from {', '.join(VERSIONS)}",
                  file=sys.stderr)
            return 2
        versions.append(rest[1])
        rest = rest[2:]
    versions = tuple(versions) or VERSIONS
    if what == "disk":
        return check_disk(versions)
    if what == "build":
        if ONE_AT_A_TIME.exists():
            return 0  # each run builds its own environment when its turn comes
        for version in versions:
            range_python(version)
        return 0
    if what == "run":
        return run(versions=versions, extra=tuple(rest))
    print("usage: python -m tests.torch_range [build|run|disk] [--version V ...] [pytest args]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
