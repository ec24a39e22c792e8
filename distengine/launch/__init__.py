"""``distengine launch``: start, supervise and tear down the ranks of a distributed job.

The command line is parsed (and checked) without importing torch; the ranks are started and
watched by torch's elastic agent (rendezvous, restarts, error files), with distengine's
additions: a loopback-only rendezvous store for single-node jobs, per-rank log files,
stack dumps of ranks that are torn down, a failure summary, and signal forwarding.

Example::

    from distengine.launch import main
    status = main(["launch", "--cpus", "2", "train.py", "--epochs", "1"])
"""
from distengine.launch.cli import launch_main, main

__all__ = ["launch_main", "main"]
