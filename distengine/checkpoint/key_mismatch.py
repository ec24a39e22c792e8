"""One line naming the weights a checkpoint and a model disagree on (sharded loads, FSDP's
``load_module_state_dict``)."""
from __future__ import annotations

from collections.abc import Iterable


def describe_key_mismatch(missing: Iterable[str], unexpected: Iterable[str], limit: int = 5) -> str:
    """One line naming the keys a checkpoint lacks and the ones it has that the model does not."""
    def names(keys: Iterable[str]) -> str:
        keys = sorted(keys)
        more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more

    missing, unexpected = list(missing), list(unexpected)
    parts = []
    if missing:
        parts.append(f"missing from the checkpoint: {names(missing)}")
    if unexpected:
        parts.append(f"in the checkpoint but not in the model: {names(unexpected)}")
    return ("the checkpoint does not match the model (" + "; ".join(parts) +
            "); load it into the model it was saved from")
