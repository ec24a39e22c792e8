"""The Trainer's numeric flags, checked before anything is built.

Every flag accepts what Lightning 2.x accepts, with the same meaning, so valid Lightning code
is never refused: ``-1`` means "no limit" for ``max_epochs``/``max_steps`` and "all batches"
for ``num_sanity_val_steps``; ``limit_*_batches`` and ``overfit_batches`` take a fraction in
``[0.0, 1.0]`` or a whole number of batches; ``val_check_interval`` a fraction of the epoch,
a batch count or a duration like ``max_time``; ``max_time`` ``"DD:HH:MM:SS"``, a ``timedelta`` or a dict such as
``{"hours": 2}``. Whole numbers may also be given as integral floats (``5.0``). Anything else
(``max_epochs=-5`` would train forever) raises a one-line ``ConfigError`` (a ``ValueError``;
``ConfigTypeError``, a ``TypeError``, for a value of the wrong kind) naming the flag, the value
and what to pass instead.

Example::

    flags = check_numeric_flags(max_epochs=10, limit_val_batches=0.25)
    flags["max_epochs"], flags["limit_val_batches"]      # -> 10, 0.25
"""
from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from distengine.utilities.exceptions import ConfigError, ConfigTypeError


def _bad(flag: str, value: Any, rule: str, example: str) -> ConfigError:
    return ConfigError(f"Trainer({flag}={value!r}): {rule}; for example {flag}={example}")


def _number(flag: str, value: Any, rule: str, example: str) -> float:
    """``value`` as a float, or TypeError when it is not a (real, non-boolean) number (a plain
    ``TypeError``, not a ``MisconfigurationException``: Lightning fails with one there too)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Trainer({flag}={value!r}): expected a number, got {type(value).__name__}; "
                        f"{rule}; for example {flag}={example}")
    if math.isnan(value):
        raise _bad(flag, value, rule, example)
    return float(value)


def _whole(flag: str, value: Any, minimum: int, rule: str, example: str, allow_none: bool = True) -> int | None:
    """A whole number >= ``minimum`` (an integral float such as 5.0 is taken as 5)."""
    if value is None and allow_none:
        return None
    x = _number(flag, value, rule, example)
    if not x.is_integer() or x < minimum:
        raise _bad(flag, value, rule, example)
    return int(x)


def _batches(flag: str, value: Any, example: str = "0.25") -> int | float | None:
    """Lightning's batch limits: a fraction in [0.0, 1.0] or a whole number of batches."""
    if value is None:
        return None
    rule = "must be a fraction of the batches in [0.0, 1.0] or a whole number of batches >= 0"
    x = _number(flag, value, rule, example)
    if isinstance(value, float) and 0.0 <= x <= 1.0:
        return x
    if x < 0 or not x.is_integer():
        raise _bad(flag, value, rule, example)
    return int(x)


def _val_check_interval(value: Any) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, (str, dict, timedelta)):  # a duration (val_schedule.py)
        from distengine.val_schedule import interval_seconds

        interval_seconds(value)
        return value
    rule = "must be a fraction of the epoch in [0.0, 1.0] or a whole number of batches >= 1"
    x = _number("val_check_interval", value, rule, "0.25")
    if isinstance(value, float) and 0.0 <= x <= 1.0:
        return x
    if x < 1 or not x.is_integer():
        raise _bad("val_check_interval", value, rule, "0.25")
    return int(x)


def _max_time(value: Any) -> Any:
    if value is None:
        return None
    from distengine.callbacks.timer import parse_duration

    example = "'00:12:00:00'"
    try:
        parse_duration(value)
    except TypeError:
        raise ConfigTypeError(f"Trainer(max_time={value!r}): expected 'DD:HH:MM:SS', a datetime.timedelta, a dict "
                              f"such as {{'hours': 2}} or seconds; for example max_time={example}") from None
    except (ValueError, OverflowError) as exc:
        reason = "must be a positive duration" if "positive" in str(exc) else \
            "is not a duration ('DD:HH:MM:SS', a timedelta, a dict of timedelta fields, or seconds)"
        raise _bad("max_time", value, reason, example) from None
    return value


def check_numeric_flags(*, max_epochs: Any = None, min_epochs: Any = None, max_steps: Any = -1,
                        min_steps: Any = None, max_time: Any = None, limit_train_batches: Any = None,
                        limit_val_batches: Any = None, limit_test_batches: Any = None,
                        limit_predict_batches: Any = None, overfit_batches: Any = 0.0,
                        val_check_interval: Any = None, check_val_every_n_epoch: Any = 1,
                        log_every_n_steps: Any = None, accumulate_grad_batches: Any = 1,
                        gradient_clip_val: Any = None, num_sanity_val_steps: Any = None,
                        fast_dev_run: Any = False) -> dict[str, Any]:
    """Check every numeric Trainer flag; return them normalised (whole numbers as ``int``,
    ``max_steps=None`` as ``-1``). Raises a one-line ``ConfigError``/``ConfigTypeError`` on bad input."""
    out: dict[str, Any] = {}
    out["max_epochs"] = _whole("max_epochs", max_epochs, -1,
                               "must be a whole number >= 0, or -1 for no epoch limit", "10")
    out["min_epochs"] = _whole("min_epochs", min_epochs, -1,
                               "must be a whole number >= 0 (or None/-1 for no minimum)", "2")
    steps = -1 if max_steps is None else max_steps
    out["max_steps"] = _whole("max_steps", steps, -1, "must be a whole number >= 0, or -1 for no step limit",
                              "1000")
    out["min_steps"] = _whole("min_steps", min_steps, -1,
                              "must be a whole number >= 0 (or None/-1 for no minimum)", "100")
    limits = {"train": limit_train_batches, "val": limit_val_batches, "test": limit_test_batches,
              "predict": limit_predict_batches}
    for kind, limit in limits.items():
        out[f"limit_{kind}_batches"] = _batches(f"limit_{kind}_batches", limit)
    out["overfit_batches"] = _batches("overfit_batches", overfit_batches, "10") or 0
    out["val_check_interval"] = _val_check_interval(val_check_interval)
    out["check_val_every_n_epoch"] = _whole(
        "check_val_every_n_epoch", check_val_every_n_epoch, 1, "must be a whole number of epochs >= 1", "2")
    out["log_every_n_steps"] = _whole("log_every_n_steps", log_every_n_steps, 0,
                                      "must be a whole number >= 1, or 0 to write no step metrics", "50")
    out["accumulate_grad_batches"] = _whole(
        "accumulate_grad_batches", accumulate_grad_batches, 1,
        "must be a whole number of batches >= 1 (1: no accumulation)", "4", allow_none=False) \
        if not isinstance(accumulate_grad_batches, dict) else _no_schedule(accumulate_grad_batches)
    if gradient_clip_val is not None:
        rule = "must be a number >= 0 (0 or None: no clipping)"
        clip = _number("gradient_clip_val", gradient_clip_val, rule, "1.0")
        if clip < 0 or math.isinf(clip):
            raise _bad("gradient_clip_val", gradient_clip_val, rule, "1.0")
    out["gradient_clip_val"] = gradient_clip_val
    out["num_sanity_val_steps"] = _whole("num_sanity_val_steps", num_sanity_val_steps, -1,
                                         "must be a whole number >= 0, or -1 to run every validation batch",
                                         "2")
    out["max_time"] = _max_time(max_time)
    if not isinstance(fast_dev_run, bool):
        fast_dev_run = _whole("fast_dev_run", fast_dev_run, 0,
                              "must be True/False or a whole number of batches >= 0", "True", allow_none=False)
    out["fast_dev_run"] = fast_dev_run
    return out


def _no_schedule(schedule: dict) -> int:
    raise ConfigError(f"Trainer(accumulate_grad_batches={schedule!r}): a per-epoch schedule (Lightning 1.x) "
                      "is not supported; pass one whole number of batches, for example accumulate_grad_batches=4")


_ONE_MEANS = {  # what an int 1 / a float 1.0 means for each batch flag (a frequent int/float mix-up)
    "limit_train_batches": ("1 batch per epoch is trained (an int counts batches)", "100% of each epoch's batches are "
                            "trained (a float is a fraction)"),
    "val_check_interval": ("validation will run after every training batch (an int counts batches)",
                           "validation will run once, at the end of each training epoch (a float is a fraction)"),
}


def log_batch_flag_choices(flags: dict[str, Any]) -> None:
    """On rank zero, an INFO line on the ``distengine`` logger for each batch flag given as
    exactly ``1`` or ``1.0``, saying which of the two it is (one batch vs. all of them)."""
    import logging

    from distengine.distributed.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:
        return
    for flag, value in flags.items():
        if isinstance(value, bool) or value is None or value != 1:
            continue
        as_int = isinstance(value, int)
        one, whole = _ONE_MEANS.get(flag, ("1 batch of each dataloader is used (an int counts batches)",
                                           "100% of the batches are used (a float is a fraction)"))
        other = "1.0 for all of them" if as_int else "1 for a single batch"
        if flag == "val_check_interval":
            other = "1.0 to validate once per epoch" if as_int else "1 to validate after every batch"
        logging.getLogger("distengine").info("`Trainer(%s=%r)` was configured so %s; pass %s", flag, value,
                                             one if as_int else whole, other)
