"""Lightning's module path for the CSV logger (``pytorch_lightning.loggers.csv_logs``)::

    from distengine.loggers.csv_logs import CSVLogger, ExperimentWriter
"""
from __future__ import annotations

from distengine.loggers.csv_logger import CSVLogger, ExperimentWriter

__all__ = ["CSVLogger", "ExperimentWriter"]
