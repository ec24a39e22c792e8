"""Lightning's precision plugins that map onto distengine's ``precision`` flag:
``Trainer(plugins=[MixedPrecision("bf16-mixed", "cpu")])`` is ``Trainer(precision="bf16-mixed")``."""
from __future__ import annotations

from typing import Any

__all__ = ["DoublePrecision", "HalfPrecision", "MixedPrecision", "Precision"]


class Precision:
    """Base of the precision plugins; ``precision`` is the Trainer flag value it stands for."""

    precision: str = "32-true"


class MixedPrecision(Precision):
    """Automatic mixed precision: ``"16-mixed"`` (with a GradScaler) or ``"bf16-mixed"``. A
    ``scaler`` of your own is not supported: distengine builds the GradScaler."""

    def __init__(self, precision: str, device: str, scaler: Any = None) -> None:
        if precision not in ("16-mixed", "bf16-mixed"):
            raise ValueError(f"MixedPrecision(precision={precision!r}): use '16-mixed' or 'bf16-mixed'")
        if scaler is not None:
            raise ValueError("MixedPrecision(scaler=...) is not supported: distengine builds the GradScaler for "
                             "'16-mixed' itself; leave scaler out")
        self.precision, self.device, self.scaler = precision, device, None


class HalfPrecision(Precision):
    """Parameters and computation in half precision; distengine supports ``"bf16-true"``."""

    def __init__(self, precision: str = "16-true") -> None:
        if precision != "bf16-true":
            raise ValueError(f"HalfPrecision(precision={precision!r}) is not supported; use 'bf16-true' "
                             "(or MixedPrecision('16-mixed', ...) for float16)")
        self.precision = precision


class DoublePrecision(Precision):
    """Parameters and computation in float64 (``precision="64-true"``)."""

    precision = "64-true"
