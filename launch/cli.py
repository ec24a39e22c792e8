"""The ``distengine`` command: ``distengine launch ...`` and ``distengine slurm ...``.

Arguments are parsed and checked before torch is imported, so ``--help`` and every input
error return at once and a bad command starts nothing (exit status 2).

Example::

    $ distengine launch --cpus 2 train.py --lr 0.1
    $ distengine launch --gpus 0,2 --log-dir logs train.py
    $ python -m distengine.launch --cpus 2 train.py      # the same, without the console script
"""
from __future__ import annotations

import sys

_USAGE = """usage: distengine <command> [options]

commands:
  launch    start a distributed job on this machine (or one node of several): distengine launch --help
  slurm     submit or manage a job on a SLURM cluster: distengine slurm --help
"""


def _error(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return 2


def launch_main(argv: list[str], prog: str = "distengine launch") -> int:
    """Run ``distengine launch`` with ``argv`` (the words after ``launch``); return the exit status."""
    from distengine.launch.config import UsageError, parse_launch_args, validate
    from distengine.launch.debug import check_not_nested, run_in_process

    try:
        opts = parse_launch_args(argv, prog=prog)
        if opts.debug:
            check_not_nested()
        store_sock = validate(opts)
    except UsageError as exc:
        return _error(prog, str(exc))
    if opts.debug:
        return run_in_process(opts)
    from distengine.launch.agent import run_job  # the first place torch is imported

    return run_job(opts, store_sock)


def _slurm_main(argv: list[str]) -> int:
    try:
        from distengine.slurm.cli import main as slurm_main
    except ModuleNotFoundError as exc:
        if exc.name in ("distengine.slurm", "distengine.slurm.cli"):
            return _error("distengine slurm", "the SLURM front end (distengine.slurm.cli) is not installed "
                                              "in this copy of distengine")
        raise
    return int(slurm_main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``distengine`` console script; returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "launch":
        return launch_main(rest)
    if command == "slurm":
        return _slurm_main(rest)
    return _error("distengine", f"unknown command {command!r}; expected 'launch' or 'slurm' "
                                "(see 'distengine --help')")


if __name__ == "__main__":
    sys.exit(main())
