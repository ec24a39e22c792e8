"""`DataModule` (also `LightningDataModule`): the data side of a run in one object.

Example::

    class Digits(distengine.DataModule):
        def __init__(self, batch_size=32):
            super().__init__()
            self.save_hyperparameters()
        def setup(self, stage):
            self.train_set, self.val_set = load_digits_split()
        def train_dataloader(self):
            return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)
        def val_dataloader(self):
            return DataLoader(self.val_set, batch_size=256)

    trainer.fit(model, datamodule=Digits())

The Trainer calls ``prepare_data()`` once per node (local rank zero, the others wait), then
``setup(stage)`` once per stage ("fit", "validate", "test", "predict") on every rank, then
the ``*_dataloader`` methods the class defines. Any object with those methods works as well.
"""
from __future__ import annotations

from typing import Any

from distengine.module import AttributeDict, Module


class DataModule:
    """Base class for data modules; override what you need."""

    def __init__(self) -> None:
        self._hparams = AttributeDict()
        self.trainer = None

    @property
    def hparams(self) -> AttributeDict:
        return self._hparams

    #: stores the calling ``__init__``'s arguments in ``self.hparams`` (same rules as the Module's)
    save_hyperparameters = Module.save_hyperparameters

    def prepare_data(self) -> None:
        """Download or write data to disk. Runs once per node; do not set state here."""

    def setup(self, stage: str) -> None:
        """Build datasets for ``stage``; runs on every rank."""

    def teardown(self, stage: str) -> None:
        """Release what ``setup`` built."""

    def on_exception(self, exception: BaseException) -> None:
        """Called once when a Trainer call (``fit``, ``validate``...) using this datamodule raises."""

    def train_dataloader(self) -> Any:
        """The training loader(s); the Trainer calls it when ``fit`` loads its training data."""
        raise _not_defined(self, "train_dataloader")

    def val_dataloader(self) -> Any:
        raise _not_defined(self, "val_dataloader")

    def test_dataloader(self) -> Any:
        raise _not_defined(self, "test_dataloader")

    def predict_dataloader(self) -> Any:
        raise _not_defined(self, "predict_dataloader")

    def state_dict(self) -> dict[str, Any]:
        """What to save in a checkpoint (under the class name, when not empty); ``load_state_dict``
        gets it back when the Trainer loads that checkpoint."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


def _not_defined(dm: DataModule, hook: str) -> Exception:
    from distengine.utilities.exceptions import ConfigError

    return ConfigError(f"{type(dm).__name__} does not define {hook}(); define it to give the Trainer that data")


LightningDataModule = DataModule
