"""Ends in the way argv[2] says, after leaving work for interpreter shutdown (no torch).

``python exits.py OUT MODE``: registers an atexit callback, starts a non-daemon thread that
finishes late and leaves a file open and unflushed, each writing to OUT; then MODE: ``return``,
``exit3`` (sys.exit(3)), ``message`` (sys.exit("...")) or ``raise`` (an uncaught ValueError).
Prints what ``python exits.py`` would see as its argv, path and main module.
"""
import atexit
import json
import os
import sys
import threading
import time

import exits_helper  # a module next to the script: found only if sys.path[0] is the script's folder

out, mode = sys.argv[1], sys.argv[2]
unclosed = open(os.path.join(out, "unclosed.txt"), "w")  # noqa: SIM115 - left open on purpose
unclosed.write("buffered")
atexit.register(lambda: open(os.path.join(out, "atexit.txt"), "w").write("ran"))


def _late():
    time.sleep(0.3)
    with open(os.path.join(out, "thread.txt"), "w") as f:
        f.write("joined")


threading.Thread(target=_late).start()
print(json.dumps({"argv": sys.argv, "path0": sys.path[0], "name": __name__, "helper": exits_helper.NAME,
                  "main_file": sys.modules["__main__"].__file__}), flush=True)


def fail_here():
    raise ValueError("raised on purpose")


if mode == "exit3":
    sys.exit(3)
elif mode == "message":
    sys.exit("stopping with a message")
elif mode == "raise":
    fail_here()
