"""``GradClipAlgorithmType`` and ``LightningEnum`` (``pytorch_lightning.utilities.enums``): string
enums that compare equal to their value in any letter case."""
from __future__ import annotations

from enum import Enum

__all__ = ["GradClipAlgorithmType", "LightningEnum"]


class LightningEnum(str, Enum):
    """A ``str`` enum: ``Member == "VALUE"`` ignores case; ``from_str`` finds a member by key
    (``source="key"``), by value (``"value"``) or either (``"any"``, keys first)."""

    @classmethod
    def from_str(cls, value: str, source: str = "key") -> LightningEnum:
        if source in ("key", "any"):
            for key in cls.__members__:
                if key.lower() == value.lower():
                    return cls[key]
        if source in ("value", "any"):
            for key, member in cls.__members__.items():
                if member == value:
                    return cls[key]
        allowed = list(cls.__members__) if source == "key" else [m.value for m in cls] if source == "value" \
            else list(cls.__members__) + [m.value for m in cls]
        raise ValueError(f"Invalid match: expected one of {allowed}, but got {value}.")

    def __eq__(self, other: object) -> bool:
        other = other.value if isinstance(other, Enum) else str(other)
        return self.value.lower() == other.lower()

    def __hash__(self) -> int:
        return hash(self.value.lower())


class GradClipAlgorithmType(LightningEnum):
    """How ``gradient_clip_val`` clips: by the total norm or by value."""

    VALUE = "value"
    NORM = "norm"
