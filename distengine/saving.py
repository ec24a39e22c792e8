"""Read and write hyperparameter files: the ``hparams.yaml`` the loggers write and the legacy
``meta_tags.csv`` (``key,value`` rows). Lightning keeps these helpers in
``lightning.pytorch.core.saving``; the same names and arguments are here.

Example::

    from distengine.saving import load_hparams_from_yaml
    hparams = load_hparams_from_yaml("lightning_logs/version_0/hparams.yaml")   # a dict

A file that does not exist gives a ``RuntimeWarning`` and ``{}`` (as in Lightning); writing
needs the folder to exist (a ``RuntimeError`` otherwise).
"""
from __future__ import annotations

import ast
import csv
import os
from typing import Any


def _missing(path: str) -> bool:
    if os.path.isfile(path):
        return False
    from distengine.distributed.rank_zero import rank_zero_warn

    rank_zero_warn(f"hyperparameter file {path!r} does not exist; returning no hyperparameters",
                   category=RuntimeWarning)
    return True


def _as_dict(hparams: Any) -> dict[str, Any]:
    from distengine.loggers.csv_logger import params_to_dict

    return params_to_dict(hparams)


def _folder_must_exist(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise RuntimeError(f"cannot write {path!r}: the folder {folder!r} does not exist; create it first")


def load_hparams_from_yaml(config_yaml: str | os.PathLike, use_omegaconf: bool = True) -> Any:
    """The mapping stored in a YAML file (``{}`` with a RuntimeWarning when the file is missing).
    With ``use_omegaconf`` and the ``omegaconf`` package installed, an OmegaConf ``DictConfig``."""
    path = os.fspath(config_yaml)
    if _missing(path):
        return {}
    import yaml

    with open(path) as fp:
        hparams = yaml.full_load(fp) or {}
    if use_omegaconf:
        try:
            from omegaconf import OmegaConf
        except ImportError:
            return hparams
        return OmegaConf.create(hparams)
    return hparams


def save_hparams_to_yaml(config_yaml: str | os.PathLike, hparams: Any, use_omegaconf: bool = True) -> None:
    """Write ``hparams`` (a dict, a Namespace or an OmegaConf container) as block YAML, the format
    the loggers' ``hparams.yaml`` has: values YAML cannot hold are written as their ``repr``."""
    from distengine.loggers.csv_logger import to_yaml, write_text_atomic

    path = os.fspath(config_yaml)
    _folder_must_exist(path)
    if use_omegaconf and type(hparams).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        hparams = OmegaConf.to_container(hparams, resolve=True)
    write_text_atomic(path, to_yaml(_as_dict(hparams)))


def load_hparams_from_tags_csv(tags_csv: str | os.PathLike) -> dict[str, Any]:
    """The ``key,value`` rows of a tags CSV file, each value read back as a Python literal
    (numbers, booleans, lists...) where it is one, else as the text."""
    path = os.fspath(tags_csv)
    if _missing(path):
        return {}
    with open(path, newline="") as fp:
        return {row["key"]: _literal(row["value"]) for row in csv.DictReader(fp, fieldnames=["key", "value"])
                if row["key"] != "key"}


def save_hparams_to_tags_csv(tags_csv: str | os.PathLike, hparams: Any) -> None:
    """Write ``hparams`` as ``key,value`` rows under a ``key,value`` header."""
    path = os.fspath(tags_csv)
    _folder_must_exist(path)
    with open(path, "w", newline="") as fp:
        writer = csv.writer(fp)
        writer.writerow(["key", "value"])
        for key, value in _as_dict(hparams).items():
            writer.writerow([key, value])


def _literal(text: str) -> Any:
    if text.lower() in ("true", "false"):  # what a CSV written by another tool may hold
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


__all__ = ["load_hparams_from_tags_csv", "load_hparams_from_yaml", "save_hparams_to_tags_csv",
           "save_hparams_to_yaml"]
