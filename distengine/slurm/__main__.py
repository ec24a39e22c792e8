"""``python -m distengine.slurm submit|status|cancel|logs ...`` (same as ``distengine slurm``)."""
import sys

from distengine.slurm.cli import main

if __name__ == "__main__":
    sys.exit(main())
