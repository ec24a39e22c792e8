"""distengine benchmarks: framework cost measured side by side with what a user would use
instead (a hand-written PyTorch loop, torchrun, pytorch-lightning). ``python -m benchmarks``
runs them all; see ``benchmarks/__main__.py`` and docs/performance.md.

Importing this package imports nothing heavy, so a fresh process that measures import
time or memory pays only for what it measures.
"""
