"""Output scenarios for the console/log tests (no process group), chosen by MODE.

splice: stdout gets a line in two writes with a stderr line between them (as a progress
        message and a library warning do); the writes are 0.2 s apart.
flood:  every rank prints about 300 KB (far more than a pipe holds), then "done".
"""
import os
import sys
import time

MODE = os.environ["MODE"]
rank = int(os.environ.get("RANK", "0"))
if MODE == "splice":
    sys.stdout.write("starting fresh ")
    sys.stdout.flush()
    time.sleep(0.2)
    sys.stderr.write("a warning on stderr\n")
    sys.stderr.flush()
    time.sleep(0.2)
    sys.stdout.write(" | Name | Type | Params\n")
    sys.stdout.flush()
elif MODE == "flood":
    line = "x" * 1023
    for _ in range(300):
        print(line)
    print(f"done on rank {rank}", flush=True)
