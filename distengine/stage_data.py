"""The data of the Trainer's calls: where each loader comes from (the argument of
``fit``/``validate``/..., a datamodule, or the module's ``*_dataloader`` hook), the fit's
sharded loaders and batch counts (:class:`~distengine.loop_context.FitData`, which the fit
loop's context holds), and the reloads ``reload_dataloaders_every_n_epochs`` asks for.

One :class:`StageData` lives as long as the Trainer (Lightning reads ``trainer.val_dataloaders``,
``num_test_batches``... after a call returns); each :class:`~distengine.stage_run.StageRun`
hands it the loaders of its call::

    Trainer.fit(model, train_dataloaders) -> StageRun.fit -> StageData.resolve("train", defer=True)
        -> StageData.begin_fit -> loop.fit_loop: sanity check -> StageRun.load_train
        -> StageData.load_train -> set_fit_loaders -> data_combined.prepare_train -> FitData

The training loader is loaded after the sanity check, as in Lightning (a ``train_dataloader``
hook is called then), or when ``trainer.estimated_stepping_batches`` is first read.
"""
from __future__ import annotations

from typing import Any, Callable

from distengine import run_warnings
from distengine.data import loader_len
from distengine.distributed import collectives
from distengine.loop_context import FitData
from distengine.module import module_overrides
from distengine.utilities.exceptions import ConfigError
from distengine.val_schedule import build_schedule

_HOOKS = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader",
          "predict": "predict_dataloader"}


class StageData:
    """The Trainer's loaders across its calls (see the module docstring)."""

    def __init__(self) -> None:
        self.fit = FitData()                      # refilled in place: the fit loop's context holds it
        self.hooks: dict[str, Callable[[], Any]] = {}  # the hook each loader came from (reloads call it again)
        self.given: dict[str, Any] = {}           # as given or returned: trainer.val_dataloaders...
        self.raw: tuple[list[Any], list[Any]] = ([], [])  # the fit's train and val sources
        self.train_replicas: int | None = None    # the data-parallel replicas the training loader was split over
        self.sanity_steps: list[int] = []         # the sanity check's batches (the loop's context holds it)
        self.eval_batches: dict[str, list[int]] = {}  # per evaluation stage, as in Lightning

    def resolve(self, trainer: Any, module: Any, stage: str, given: Any, datamodule: Any, kind: str,
                required: bool = True, defer: bool = False) -> list[Any]:
        """The loaders of ``kind`` for this call: ``given``, else the datamodule's hook, else the
        module's (``defer``: a hook is only remembered, called when a validation first needs it)."""
        hook = _HOOKS[kind]
        source = given
        self.hooks.pop(kind, None)
        if source is None and datamodule is not None:  # (its prepare_data/setup ran: StageRun._setup_hooks)
            if datamodule_provides(datamodule, hook):
                self.hooks[kind] = getattr(datamodule, hook)
                source = None if defer else self.hooks[kind]()
        if source is None and kind not in self.hooks and module_overrides(module, hook):
            self.hooks[kind] = getattr(module, hook)
            source = None if defer else self.hooks[kind]()
        if defer and kind in self.hooks:  # called when the loop first needs it (load_train, loop._val_data)
            return []
        if stage == "fit" and source is not None:
            source = _overfit(trainer, kind, source)
        self.given[kind] = source
        return _loaders(kind, source, required)

    def begin_fit(self, trainer: Any, module: Any, train: list[Any], val: list[Any]) -> None:
        """The fit's data before its loop: the validation loaders given to ``fit``; the training
        loader is loaded by :meth:`load_train` after the sanity check, as Lightning does (a
        ``train_dataloader`` hook is called then; ``num_training_batches`` is inf until then)."""
        from distengine.val_schedule import ValSchedule

        data = self.fit
        self.raw = (train, val)
        data.train_loader, data.train_sampler, data.num_train_batches = None, None, 0
        data.train_pending = True
        data.limits, data.has_val_step = trainer.limits, module_overrides(module, "validation_step")
        # until the training loader is known: the epochs that validate (the sanity check reads them)
        data.val_schedule = ValSchedule(every_n_epochs=trainer.check_val_every_n_epoch,
                                        last_time=data.val_schedule.last_time)
        self.set_val_loaders(trainer, val)

    def load_train(self, trainer: Any, module: Any) -> bool:
        """Load the fit's training loader once (the hook is called now); False when it already
        was, or ``limit_train_batches=0`` (Lightning calls no hook then; nothing is trained)."""
        data = self.fit
        if not data.train_pending:
            return False
        data.train_pending = False
        train = self.raw[0]
        if trainer.limits["train"] == 0:
            data.val_schedule = build_schedule(trainer.val_check_interval, trainer.check_val_every_n_epoch, 1,
                                               False)
            return False
        if not train:  # a hook remembered by resolve(defer=True)
            self.given["train"] = source = _overfit(trainer, "train", self.hooks["train"]())
            train = _loaders("train", source, True)
        self.set_fit_loaders(trainer, module, train)
        return True

    def set_fit_loaders(self, trainer: Any, module: Any, train: list[Any]) -> None:
        """Shard the training loader and build the fit's validation schedule."""
        from distengine.data_combined import prepare_train

        data, limits, strategy = self.fit, trainer.limits, trainer.strategy
        self.raw = (train, self.raw[1])
        shuffle = False if trainer.overfit_batches else None
        replicas, rank = strategy.data_parallel(trainer.env)  # model parallel: one tensor-parallel group, one split
        self.train_replicas = replicas  # the checkpoint's data position counts samples over these
        data.train_loader, data.train_sampler, data.num_train_batches = prepare_train(
            train[0], replicas, rank, trainer.use_distributed_sampler, shuffle, limits["train"],
            strategy.lightning_distributed)
        if data.num_train_batches == 0 and limits["train"] != 0:  # (limit 0: fit trains nothing, as Lightning)
            raise ConfigError("limit_train_batches leaves no training batch; raise it")
        old = data.val_schedule  # (a reload keeps the time-based clock running)
        data.val_schedule = build_schedule(trainer.val_check_interval, trainer.check_val_every_n_epoch,
                                           data.num_train_batches or 1, limits["val"] != 0)
        data.val_schedule.last_time = old.last_time

    def set_val_loaders(self, trainer: Any, val: list[Any]) -> None:
        from distengine.data_combined import prepare_eval

        data = self.fit
        self.raw = (self.raw[0], val)
        replicas, rank = trainer.strategy.data_parallel(trainer.env)  # model parallel: split over data_parallel only
        data.val_loaders = [prepare_eval(v, replicas, rank, trainer.use_distributed_sampler) for v in val]
        # Lightning: no validation_step, no validation batches (checkpoints then follow the epochs)
        data.num_val_batches = data.val_limits() if data.has_val_step else []
        n_max = trainer.num_sanity_val_steps  # in place: the loop's context holds the list
        self.sanity_steps[:] = [n if n_max < 0 else min(n, n_max) for n in data.num_val_batches]

    def reload(self, trainer: Any, module: Any, kind: str) -> None:
        """Call the ``train_dataloader``/``val_dataloader`` hook again (loaders passed to ``fit``
        stay, as in Lightning); the validation one only refills the validation loaders."""
        hook = self.hooks.get(kind)
        if hook is None:
            return
        if kind == "val" and (not self.fit.has_val_step or self.fit.limits.get("val") == 0):
            return  # Lightning: no val_dataloader() call when nothing would be validated
        from distengine import data_combined as dc

        source = self.given[kind] = _overfit(trainer, kind, hook())  # as returned: trainer.val_dataloaders
        if kind == "train":
            self.set_fit_loaders(trainer, module, _loaders("train", source, True))
        else:
            first = self.fit.val_pending
            self.fit.val_pending = False
            self.set_val_loaders(trainer, dc.eval_sources(source))
            if first:  # (the warnings a loader given to fit gets at the start)
                run_warnings.warn_few_workers(trainer, [dl for v in self.raw[1] for dl in dc.inner_loaders(v)], "val")


def _overfit(trainer: Any, kind: str, source: Any) -> Any:
    """Under ``overfit_batches`` the fit's loaders read their data in order (data.sequential_for_overfit)."""
    if not trainer.overfit_batches or source is None:
        return source
    from distengine.data import sequential_for_overfit

    return sequential_for_overfit(source, kind)


def _loaders(kind: str, source: Any, required: bool) -> list[Any]:
    """``source`` (as given or returned) as the list of loaders of ``kind``; checked for emptiness."""
    if source is None:
        if required:
            what = {"train": "training", "val": "validation", "test": "test", "predict": "predict"}[kind]
            raise ConfigError(f"no {what} data: pass it to the Trainer call or define {_HOOKS[kind]}() in the module")
        return []
    from distengine import data_combined as dc
    from distengine.utilities.data import warn_iterable_with_len

    # training: one loader, a container of them read together (CombinedLoader); evaluation: a list
    loaders = [dc.train_source(source)] if kind == "train" else dc.eval_sources(source)
    inner = [dl for loader in loaders for dl in dc.inner_loaders(loader)]
    for i, loader in enumerate(inner):
        warn_iterable_with_len(loader)
        if loader_len(loader) == 0:
            raise ConfigError(f"the {kind} dataloader #{i} is empty (len 0): check the dataset and batch_size")
    return loaders


def datamodule_provides(datamodule: Any, hook: str) -> bool:
    """Whether ``datamodule`` gives the loaders of ``hook`` (``train_dataloader``...): a
    LightningDataModule that overrides the base's (which raises), any other object that has it."""
    from distengine.datamodule import DataModule

    if isinstance(datamodule, DataModule):
        from distengine.utilities.model_helpers import is_overridden

        return is_overridden(hook, datamodule)
    return callable(getattr(datamodule, hook, None))


def attach_datamodule(trainer: Any, datamodule: Any) -> None:
    """``trainer.datamodule`` and ``datamodule.trainer`` for this call."""
    trainer.datamodule = datamodule
    if hasattr(datamodule, "trainer"):
        datamodule.trainer = trainer


def prepare_datamodule(trainer: Any, datamodule: Any) -> None:
    """The datamodule's ``prepare_data``: once, on one rank per node (the others wait)."""
    if getattr(datamodule, "_distengine_stages", None) is not None:
        return
    datamodule._distengine_stages = set()
    if hasattr(datamodule, "prepare_data"):  # downloads: once per node, the others wait
        per_node = getattr(datamodule, "prepare_data_per_node", trainer.prepare_data_per_node)
        if (trainer.local_rank if per_node else trainer.global_rank) == 0:
            datamodule.prepare_data()
        collectives.barrier()


def setup_datamodule(datamodule: Any, stage: str) -> None:
    """The datamodule's ``setup(stage)``, once per stage (before the callbacks' and the module's)."""
    done = datamodule._distengine_stages
    if stage not in done and hasattr(datamodule, "setup"):
        datamodule.setup(stage=stage)
    done.add(stage)
