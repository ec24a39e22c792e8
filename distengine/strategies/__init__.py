"""Strategies: how a rank holds the model (one device, DDP, FSDP2). See ``base.py``."""
from __future__ import annotations

from distengine.strategies.base import Strategy

__all__ = ["Strategy"]
