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
  checkpoint consolidate [--overwrite] SRC DST.ckpt
            turn a sharded (FSDP) checkpoint directory into one ordinary checkpoint file
"""


def _error(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return 2


def _note_launcher_flags_after_script(opts, prog: str) -> None:
    """Everything after SCRIPT is the script's (as with torchrun). A one-rank job whose script
    arguments hold a launcher flag (``distengine launch train.py --gpus 2``) most likely meant
    it for the launcher: say where it went and how to give it to the launcher, in one line."""
    if opts.nproc * opts.max_nodes != 1:
        return
    from distengine.launch.config import build_parser

    takes_value = {s: a.nargs != 0 for a in build_parser(prog)._actions for s in a.option_strings
                   if s not in ("-h", "--help")}
    args = opts.script_args
    for i, arg in enumerate(args):
        flag = arg.split("=", 1)[0]
        if flag not in takes_value:
            continue
        words = [arg] + (args[i + 1:i + 2] if takes_value[flag] and "=" not in arg else [])
        given = " ".join(words)
        print(f"{prog}: note: {given!r} comes after the script, so it was passed to {opts.script} "
              f"(this job has one rank); to give it to the launcher, put it before the script: "
              f"{prog} {given} {opts.script} ...", file=sys.stderr, flush=True)
        return


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
    _note_launcher_flags_after_script(opts, prog)
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


_CHECKPOINT_USAGE = """usage: distengine checkpoint consolidate [--overwrite] SRC DST.ckpt

Turn the sharded checkpoint directory SRC (written by strategy='fsdp') into one ordinary
checkpoint file DST.ckpt: complete weights, optimizer states and the training progress. It loads
with Module.load_from_checkpoint and resumes with fit(ckpt_path=...) on any strategy.

options:
  --overwrite   replace DST.ckpt if it exists (without it, an existing DST is refused)
  -h, --help    show this help and exit
"""


def checkpoint_main(argv: list[str]) -> int:
    """Run ``distengine checkpoint ...``; torch is imported only here, after the arguments are checked."""
    prog = "distengine checkpoint"
    if not argv or argv[0] in ("-h", "--help"):
        print(_CHECKPOINT_USAGE, end="")
        return 0 if argv else 2
    if argv[0] != "consolidate":
        return _error(prog, f"unknown subcommand {argv[0]!r}; expected 'consolidate'")
    args = argv[1:]
    if any(a in ("-h", "--help") for a in args):
        print(_CHECKPOINT_USAGE, end="")
        return 0
    overwrite = "--overwrite" in args
    args = [a for a in args if a != "--overwrite"]
    unknown = [a for a in args if a.startswith("-")]
    if unknown:
        return _error(prog, f"unknown option {unknown[0]!r} for consolidate; it takes --overwrite "
                            "(see 'distengine checkpoint consolidate --help')")
    if len(args) != 2:
        return _error(prog, "consolidate takes two arguments: SRC (a sharded checkpoint directory) and DST.ckpt "
                            "(see 'distengine checkpoint consolidate --help')")
    import os

    src, dst = args
    if not os.path.isdir(src):
        return _error(prog, f"{src!r} is not a directory; SRC must be a sharded checkpoint directory")
    if os.path.isdir(dst):
        return _error(prog, f"{dst!r} is a directory; DST names the file to write")
    if os.path.lexists(dst) and not overwrite:
        return _error(prog, f"{dst!r} exists; pass --overwrite to replace it, or name another DST file")
    from distengine.checkpoint.io import CheckpointError
    from distengine.checkpoint.sharded import consolidate

    try:
        out = consolidate(src, dst)
    except CheckpointError as exc:
        return _error(prog, str(exc))
    print(f"wrote {dst}: {len(out.get('state_dict', {}))} weight tensors, "
          f"{len(out.get('optimizer_states', []))} optimizer state(s)")
    return 0


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
    if command == "checkpoint":
        return checkpoint_main(rest)
    return _error("distengine", f"unknown command {command!r}; expected 'launch', 'slurm' or 'checkpoint' "
                                "(see 'distengine --help')")


if __name__ == "__main__":
    sys.exit(main())
