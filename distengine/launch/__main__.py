"""``python -m distengine.launch [options] script.py [args]``: the same as ``distengine launch``.

The Trainer re-executes a plain ``python train.py`` that asked for several devices as
``python -m distengine.launch --cpus|--gpus N train.py args``.
"""
import sys

from distengine.launch.cli import launch_main

if __name__ == "__main__":
    sys.exit(launch_main(sys.argv[1:], prog="python -m distengine.launch"))
