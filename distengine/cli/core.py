"""``LightningCLI``: parse a config, build the model, data and Trainer, run a subcommand.

The steps of one call, in order: build the parsers (one per subcommand: ``fit``, ``validate``,
``test``, ``predict``), parse ``args`` (or ``sys.argv``), seed, instantiate the classes, run
the subcommand's Trainer method. A parsing error ends the process with one line on stderr and
exit status 2, before anything is built.
"""
from __future__ import annotations

import inspect
import os
import random
import sys
import zlib
from functools import partial, update_wrapper
from types import MethodType
from typing import Any, Callable

import torch
from jsonargparse import ActionConfigFile, ArgumentError, Namespace

from distengine.cli.config_files import check_config_files
from distengine.cli.errors import one_line
from distengine.cli.parser import (
    LIGHTNING_ONLY_FLAGS,
    LR_SCHEDULER_TYPES,
    LightningArgumentParser,
    ReduceLROnPlateau,
)
from distengine.cli.save_config import SaveConfigCallback
from distengine.datamodule import DataModule
from distengine.module import Module, module_overrides
from distengine.seed import seed_everything
from distengine.trainer import Trainer

_SUBCOMMANDS: dict[str, set[str]] = {
    "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
    "validate": {"model", "dataloaders", "datamodule"},
    "test": {"model", "dataloaders", "datamodule", "test_dataloaders"},
    "predict": {"model", "dataloaders", "datamodule"},
}


class LightningCLI:
    """A command line for ``model_class`` and ``datamodule_class`` (Lightning's ``LightningCLI``).

    ``python train.py fit --config c.yaml --model.hidden_dim 64 --trainer.max_epochs 3``;
    ``--print_config`` prints the resolved YAML and exits; ``--seed_everything 42``;
    ``--trainer.callbacks`` / ``--trainer.logger`` take class paths with ``init_args``;
    ``--optimizer`` / ``--lr_scheduler`` choose the optimizer by class path (then the model's
    ``configure_optimizers`` is replaced by :meth:`configure_optimizers`).

    Arguments (the subset of Lightning's that distengine supports):
        model_class, datamodule_class: classes (or functions returning instances); with
            ``None`` any subclass is chosen by ``--model`` / ``--data`` class path.
        save_config_callback: the class that writes ``config.yaml`` to the log dir (``None``:
            no file); ``save_config_kwargs`` go to it (``overwrite``, ``config_filename``, ...).
        trainer_class, trainer_defaults: the Trainer and defaults for its flags (callbacks
            given here are always added and are not configurable).
        seed_everything_default: ``True`` draws a seed, an int fixes it, ``False`` skips seeding.
        parser_kwargs: for the parsers (a dict per subcommand name is allowed).
        subclass_mode_model, subclass_mode_data: accept subclasses chosen by class path.
        args: a list (like ``sys.argv[1:]``) or a dict to parse instead of the command line.
        run: ``False`` builds ``cli.model``, ``cli.datamodule``, ``cli.trainer`` only (no subcommand).
        auto_configure_optimizers: add ``--optimizer`` and ``--lr_scheduler``.

    Not supported: ``load_from_checkpoint_support`` (the model's hyperparameters are not read
    back from ``ckpt_path``) and jsonnet configs.
    """

    def __init__(self, model_class: Any = None, datamodule_class: Any = None,
                 save_config_callback: type[SaveConfigCallback] | None = SaveConfigCallback,
                 save_config_kwargs: dict[str, Any] | None = None,
                 trainer_class: type[Trainer] | Callable[..., Trainer] = Trainer,
                 trainer_defaults: dict[str, Any] | None = None, seed_everything_default: bool | int = True,
                 parser_kwargs: dict[str, Any] | None = None, parser_class: type = LightningArgumentParser,
                 subclass_mode_model: bool = False, subclass_mode_data: bool = False,
                 args: list[str] | dict[str, Any] | Namespace | None = None, run: bool = True,
                 auto_configure_optimizers: bool = True) -> None:
        self.save_config_callback, self.save_config_kwargs = save_config_callback, save_config_kwargs or {}
        self.trainer_class, self.trainer_defaults = trainer_class, trainer_defaults or {}
        self.seed_everything_default = seed_everything_default
        self.parser_kwargs, self.parser_class = parser_kwargs or {}, parser_class
        self.auto_configure_optimizers = auto_configure_optimizers
        self.model_class, self._model_class = model_class, model_class or Module
        self.subclass_mode_model = model_class is None or subclass_mode_model
        self.datamodule_class, self._datamodule_class = datamodule_class, datamodule_class or DataModule
        self.subclass_mode_data = datamodule_class is None or subclass_mode_data

        names = self.subcommands()
        main_kwargs = {k: v for k, v in self.parser_kwargs.items() if k not in names}
        sub_kwargs = {k: v for k, v in self.parser_kwargs.items() if k in names}
        self.setup_parser(run, main_kwargs, sub_kwargs)
        self.parse_arguments(self.parser, args)
        self.subcommand = self.config["subcommand"] if run else None
        self._set_seed()
        self.before_instantiate_classes()
        self.instantiate_classes()
        self.after_instantiate_classes()
        if self.subcommand is not None:
            self._run_subcommand(self.subcommand)

    # ------------------------------------------------------------------ parsers
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """The subcommands and the Trainer-method arguments each leaves out (filled by the CLI)."""
        return {k: set(v) for k, v in _SUBCOMMANDS.items()}

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        from distengine import __version__

        kwargs.setdefault("dump_header", [f"distengine=={__version__}"])
        parser = self.parser_class(**kwargs)
        parser.add_argument("-c", "--config", action=ActionConfigFile,
                            help="a YAML (or JSON) config file; several are merged in order, the later wins")
        return parser

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any], sub_kwargs: dict[str, Any]) -> None:
        self.parser = self.init_parser(**main_kwargs)
        self._subcommand_parsers: dict[str, LightningArgumentParser] = {}
        self._subcommand_method_arguments: dict[str, list[str]] = {}
        if not add_subcommands:
            self._add_arguments(self.parser)
            return
        subcommands = self.parser.add_subcommands()
        trainer_class = self._trainer_type()
        for name, skip in self.subcommands().items():
            doc = (getattr(trainer_class, name).__doc__ or "").strip().split("\n")[0] or None
            kwargs = dict(sub_kwargs.get(name, {}))
            kwargs.setdefault("description", doc)
            parser = self.init_parser(**kwargs)
            self._add_arguments(parser)
            self._subcommand_method_arguments[name] = parser.add_method_arguments(trainer_class, name, skip=skip)
            if "weights_only" not in inspect.signature(getattr(trainer_class, name)).parameters:
                parser.add_argument("--weights_only", type=bool | None, default=None,
                                    help="accepted for Lightning configs; distengine loads checkpoints safely")
            self._subcommand_parsers[name] = parser
            subcommands.add_subcommand(name, parser, help=doc)

    def _trainer_type(self) -> type:
        if isinstance(self.trainer_class, type):
            return self.trainer_class
        from jsonargparse import class_from_function

        return class_from_function(self.trainer_class)

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--seed_everything", type=bool | int, default=self.seed_everything_default,
                            help="an int seeds everything before the classes are built; true draws a seed; "
                                 "false does not seed")

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(self._datamodule_class, "data", subclass_mode=self.subclass_mode_data,
                                        required=self.datamodule_class is not None)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Override to add arguments (``parser.add_lightning_class_args(EarlyStopping, "early_stopping")``)
        or links (``parser.link_arguments("data.num_classes", "model.num_classes")``)."""

    def _add_arguments(self, parser: LightningArgumentParser) -> None:
        self.add_default_arguments_to_parser(parser)
        self.add_core_arguments_to_parser(parser)
        self.add_arguments_to_parser(parser)
        if self.auto_configure_optimizers:
            if not parser._optimizers:
                parser.add_optimizer_args((torch.optim.Optimizer,))
            if not parser._lr_schedulers:
                parser.add_lr_scheduler_args(LR_SCHEDULER_TYPES)
        for key, (kind, link_to) in {**parser._optimizers, **parser._lr_schedulers}.items():
            if link_to != "AUTOMATIC":
                parser.link_arguments(key, link_to, compute_fn=None if isinstance(kind, tuple)
                                      else partial(_with_class_path, kind))

    def _parser(self, subcommand: str | None) -> LightningArgumentParser:
        return self.parser if subcommand is None else self._subcommand_parsers[subcommand]

    # ------------------------------------------------------------------ parsing
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args`` into ``self.config``; a bad argument or config exits with one line (status 2)."""
        if not isinstance(args, (dict, Namespace)):
            argv = list(sys.argv[1:] if args is None else args)
            problem = check_config_files(argv)  # not UTF-8, a python tag, bad YAML: name the file
            if problem:
                name = next((a for a in argv if a in self._subcommand_parsers), None)
                _usage_error(f"{self.parser.prog} {name}" if name else self.parser.prog, problem)
        try:
            if isinstance(args, (dict, Namespace)):
                self.config = parser.parse_object(args)
            else:
                self.config = parser.parse_args(args)
        except ArgumentError as exc:
            argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, (dict, Namespace)) else []
            name = next((a for a in argv if a in self._subcommand_parsers), None)
            if name is None and isinstance(args, (dict, Namespace)):
                name = args.get("subcommand")
            sub = self._subcommand_parsers.get(name) if name else None
            prog = f"{self.parser.prog} {name}" if sub is not None else self.parser.prog
            _usage_error(prog, one_line(str(exc), sub or parser, prog))
        name = self.config.get("subcommand")
        config = self.config[name] if name else self.config
        for key in self._parser(name).lightning_only_keys:
            default = LIGHTNING_ONLY_FLAGS[key.rpartition(".")[2]][1]
            if config.get(key) != default:
                _usage_error(f"{self.parser.prog} {name or ''}".strip(),
                             f"--{key}={config.get(key)!r}: distengine's Trainer has no such flag; remove it "
                             f"(Lightning's default {default!r} is accepted so that Lightning configs load)")

    def _get(self, config: Any, key: str, default: Any = None) -> Any:
        return config.get(str(self.subcommand), config).get(key, default)

    def _set_seed(self) -> None:
        seed = self._get(self.config, "seed_everything")
        if seed is False or seed is None:
            return
        seed = seed_everything(_shared_seed() if seed is True else seed, workers=True)
        (self.config[self.subcommand] if self.subcommand else self.config)["seed_everything"] = seed

    # ------------------------------------------------------------------ building
    def before_instantiate_classes(self) -> None:
        """Override to run code after parsing, before the classes are built."""

    def after_instantiate_classes(self) -> None:
        """Override to run code after the classes are built, before the subcommand runs."""

    def instantiate_classes(self) -> None:
        """Build ``self.datamodule``, ``self.model`` and ``self.trainer`` from the config."""
        instantiate = getattr(self.parser, "instantiate", None) or self.parser.instantiate_classes  # < 4.49
        self.config_init = instantiate(self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Build the Trainer from its config plus ``kwargs``; appends the parser's callback
        groups, ``trainer_defaults['callbacks']`` and the config-saving callback."""
        parser = self._parser(self.subcommand)
        trainer_config = self._get(self.config_init, "trainer", default={})
        if isinstance(trainer_config, Namespace):
            trainer_config = trainer_config.as_dict()
        config = {**trainer_config, **kwargs}
        for key in parser.lightning_only_keys:  # checked to be Lightning's defaults when parsed
            config.pop(key.rpartition(".")[2], None)
        callbacks = config.get("callbacks")
        callbacks = [] if callbacks is None else list(callbacks) if isinstance(callbacks, list) else [callbacks]
        callbacks += [self._get(self.config_init, key) for key in parser.callback_keys]
        extra = self.trainer_defaults.get("callbacks", [])
        callbacks += list(extra) if isinstance(extra, (list, tuple)) else [extra]
        if self.save_config_callback is not None and not config.get("fast_dev_run", False):
            callbacks.append(self.save_config_callback(parser, self.config.get(str(self.subcommand), self.config),
                                                       **self.save_config_kwargs))
        config["callbacks"] = callbacks
        return self.trainer_class(**config)

    @staticmethod
    def configure_optimizers(lightning_module: Module, optimizer: torch.optim.Optimizer,
                             lr_scheduler: Any = None) -> Any:
        """What the model's ``configure_optimizers`` returns when ``--optimizer`` is given."""
        if lr_scheduler is None:
            return optimizer
        if isinstance(lr_scheduler, ReduceLROnPlateau):
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler,
                                                             "monitor": lr_scheduler.monitor}}
        return [optimizer], [lr_scheduler]

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        if not self.auto_configure_optimizers:
            return
        parser = self._parser(subcommand)
        optimizers = [k for k, (_, link) in parser._optimizers.items() if link == "AUTOMATIC"]
        schedulers = [k for k, (_, link) in parser._lr_schedulers.items() if link == "AUTOMATIC"]
        if len(optimizers) > 1 or len(schedulers) > 1:
            raise ValueError(f"{type(self).__name__} builds at most one optimizer and one lr_scheduler "
                             f"automatically, got {optimizers + schedulers}; link them and write "
                             "configure_optimizers yourself")
        if not optimizers:
            return
        optimizer_init = self._class_init(parser._optimizers, optimizers[0])
        if not optimizer_init:
            return  # no --optimizer given: the model's own configure_optimizers stays
        scheduler_init = self._class_init(parser._lr_schedulers, schedulers[0]) if schedulers else None
        if module_overrides(self.model, "configure_optimizers"):
            from distengine.distributed.rank_zero import rank_zero_warn

            rank_zero_warn(f"{type(self.model).__name__}.configure_optimizers is replaced by the optimizer "
                           f"from the config ({type(self).__name__}.configure_optimizers)")
        optimizer = instantiate_class(self.model.parameters(), optimizer_init)
        scheduler = instantiate_class(optimizer, scheduler_init) if scheduler_init else None
        fn = partial(self.configure_optimizers, optimizer=optimizer, lr_scheduler=scheduler)
        update_wrapper(fn, self.configure_optimizers)
        self.model.configure_optimizers = MethodType(fn, self.model)

    def _class_init(self, register: dict[str, tuple[Any, str]], key: str) -> dict[str, Any] | None:
        init = self._get(self.config_init, key)
        kind = register[key][0]
        if not isinstance(kind, tuple):
            init = _with_class_path(kind, init)
        if isinstance(init, Namespace):
            init = init.as_dict()
        return init or None

    # ------------------------------------------------------------------ running
    def _run_subcommand(self, subcommand: str) -> None:
        before = getattr(self, f"before_{subcommand}", None)
        if callable(before):
            before()
        fn = getattr(self, subcommand, getattr(self.trainer, subcommand))
        fn(**self._prepare_subcommand_kwargs(subcommand))
        after = getattr(self, f"after_{subcommand}", None)
        if callable(after):
            after()

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        wanted = self._subcommand_method_arguments[subcommand]
        kwargs = {k: v for k, v in self.config_init[subcommand].items() if k in wanted}
        kwargs["model"] = self.model
        if self.datamodule is not None:
            kwargs["datamodule"] = self.datamodule
        return kwargs


def _usage_error(prog: str, message: str) -> None:
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.exit(2)  # argparse's status for a usage error


def _with_class_path(kind: type, init_args: Any = None) -> dict[str, Any]:
    if isinstance(init_args, Namespace):
        init_args = init_args.as_dict()
    return {"class_path": f"{kind.__module__}.{kind.__name__}", "init_args": init_args or {}}


def instantiate_class(args: Any, init: dict[str, Any]) -> Any:
    """``init = {"class_path": "torch.optim.SGD", "init_args": {...}}`` -> ``SGD(*args, **init_args)``."""
    import importlib

    module, _, name = init["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return cls(*(args if isinstance(args, tuple) else (args,)), **init.get("init_args", {}))


def _shared_seed() -> int:
    """``seed_everything: true``: a seed from the environment when one was set, else drawn.
    The ranks of one job must agree (the training sampler shuffles with it), so there it is
    derived from what they share: the SLURM job id, or the launcher's run id and port."""
    env = os.environ
    for name in ("DISTENGINE_SEED", "PL_GLOBAL_SEED"):
        if env.get(name, "").isdigit():
            return int(env[name])
    if env.get("SLURM_JOB_ID") and env.get("SLURM_NTASKS", "1") != "1":
        return zlib.crc32(f"slurm:{env['SLURM_JOB_ID']}".encode())
    if int(env.get("WORLD_SIZE", "1") or 1) > 1:
        shared = f"{env.get('TORCHELASTIC_RUN_ID', '')}:{env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}"
        return zlib.crc32(shared.encode())
    return random.randint(0, 2**32 - 1)
