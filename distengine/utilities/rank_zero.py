"""``from pytorch_lightning.utilities.rank_zero import rank_zero_only`` spelled for distengine."""
from distengine.distributed.rank_zero import (  # noqa: F401 - the public names of this module
    global_rank,
    rank_zero_debug,
    rank_zero_deprecation,
    rank_zero_info,
    rank_zero_only,
    rank_zero_warn,
)

__all__ = ["global_rank", "rank_zero_debug", "rank_zero_deprecation", "rank_zero_info", "rank_zero_only",
           "rank_zero_warn"]
