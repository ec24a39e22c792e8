"""``Module.load_from_checkpoint``: build a module from a checkpoint's hyperparameters (or an
``hparams_file``), load its weights (``strict`` or not), call ``on_load_checkpoint``.

``hparams_file`` is Lightning's argument: a ``.yaml``/``.yml`` file (such as the
``hparams.yaml`` a logger writes) or a ``.csv`` of ``key,value`` rows; its values replace the
checkpoint's hyperparameters, and keyword arguments override both. A file that does not exist
gives a ``RuntimeWarning`` and no hyperparameters, as in Lightning.

Example::

    model = Classifier.load_from_checkpoint("last.ckpt", hparams_file="lightning_logs/version_0/hparams.yaml")
"""
from __future__ import annotations

import inspect
import os
from argparse import Namespace
from typing import Any

from distengine.utilities.exceptions import ConfigError


def read_hparams_file(path: Any) -> dict[str, Any]:
    """The hyperparameters in a ``.yaml``/``.yml`` or ``.csv`` file ({} with a RuntimeWarning
    when it does not exist)."""
    path = os.fspath(path)
    ext = path.rsplit(".", 1)[-1].lower()
    if ext not in ("yaml", "yml", "csv"):
        raise ConfigError(f"hparams_file={path!r} must be a .yaml, .yml or .csv file")
    if not os.path.exists(path):
        from distengine.distributed.rank_zero import rank_zero_warn

        rank_zero_warn(f"hparams_file {path!r} does not exist; the module is built without hyperparameters from it",
                       category=RuntimeWarning)
        return {}
    from distengine.saving import load_hparams_from_tags_csv, load_hparams_from_yaml

    if ext == "csv":
        return load_hparams_from_tags_csv(path)
    return dict(load_hparams_from_yaml(path, use_omegaconf=False))


def load_module(cls: type, checkpoint_path: str, map_location: Any, hparams_file: Any, strict: bool,
                overrides: dict[str, Any]) -> Any:
    from distengine.checkpoint.apply import load_weights
    from distengine.checkpoint.io import safe_load

    ckpt = safe_load(checkpoint_path, map_location=map_location, mmap=True)  # weights copied out
    hparams = dict(ckpt.get(cls.CHECKPOINT_HYPER_PARAMS_KEY) or {}) if hparams_file is None \
        else read_hparams_file(hparams_file)
    hparams.update(overrides)
    missing = [k for k in ckpt.get("hparams_modules") or () if k not in hparams]
    if missing:
        given = ", ".join(f"{k}=..." for k in missing)
        raise TypeError(f"{cls.__name__}.load_from_checkpoint: the __init__ argument(s) {missing} were "
                        f"nn.Module objects, which the checkpoint does not pickle (their weights are in its "
                        f"state_dict); pass them: {cls.__name__}.load_from_checkpoint(path, {given}), or "
                        f"leave them out with save_hyperparameters(ignore={missing})")
    name = ckpt.get(cls.CHECKPOINT_HYPER_PARAMS_NAME)
    if name and name in inspect.signature(cls.__init__).parameters:
        # the 1.x style: __init__(self, hparams) took one Namespace (or dict); hand it back
        as_namespace = ckpt.get(cls.CHECKPOINT_HYPER_PARAMS_TYPE) == "Namespace"
        model = cls(**{name: Namespace(**hparams) if as_namespace else hparams})
    else:
        model = cls(**hparams)
    load_weights(model, ckpt["state_dict"], strict=strict, source=checkpoint_path)
    return model, ckpt
