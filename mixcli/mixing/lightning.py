"""Lightning integration (``pip install "mixcli[lightning]"``): a :class:`~mixcli.mixing.Mixer` in a
``LightningModule``.

Two forms, use either:

- :class:`MixerModule`, a mix-in: set ``self.mixer`` in ``__init__``; it provides ``training_step`` (mixed
  forward, the method's loss, logged as ``train_loss``), starts each epoch, and saves / restores the mixer's
  state in Lightning's checkpoints. Override ``training_step`` to do more; call ``self.mixed_step(batch)``.
- :class:`MixerCallback`, for a module that keeps its own ``training_step`` (calling ``mixer(x, y)`` and
  ``mixer.loss(out)`` itself): ``Trainer(callbacks=[MixerCallback(mixer)])`` starts the epochs and puts the
  mixer's state in the checkpoints.

Epochs count from 1 as in mixcli (Lightning's ``current_epoch`` + 1).
"""
from __future__ import annotations

from typing import Any

from ..api import PluginError


def _lightning():
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            raise PluginError('the Lightning integration needs Lightning: pip install "mixcli[lightning]"') from None
    return pl


pl = _lightning()

__all__ = ["MixerCallback", "MixerModule"]

_KEY = "mixcli_mixer"


def _batch(batch) -> tuple:
    if isinstance(batch, dict) and {"x", "y"} <= set(batch):
        return batch["x"], batch["y"], batch.get("index")
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        return tuple(batch) if len(batch) == 3 else (batch[0], batch[1], None)
    raise PluginError("a mixed training batch must be (x, y), (x, y, index) or a dict with x and y, got "
                      f"{type(batch).__name__}")


class MixerCallback(pl.Callback):
    """Starts the mixer's epochs and keeps its state (generator, counters, the method's own) in checkpoints."""

    def __init__(self, mixer) -> None:
        from .mixer import Mixer

        if not isinstance(mixer, Mixer):
            raise PluginError(f"MixerCallback needs a mixcli.mixing.Mixer, got {type(mixer).__name__}")
        self.mixer = mixer

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.mixer.start_epoch(trainer.current_epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        return {_KEY: self.mixer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.mixer.load_state_dict(state_dict[_KEY])


class MixerModule:
    """A ``LightningModule`` mix-in: ``class Net(MixerModule, L.LightningModule)`` with ``self.mixer`` set in
    ``__init__`` (a :class:`~mixcli.mixing.Mixer` of the module's network)."""

    mixer: Any

    def _mixer(self):
        from .mixer import Mixer

        mixer = getattr(self, "mixer", None)
        if not isinstance(mixer, Mixer):
            raise PluginError(f"{type(self).__name__} uses MixerModule: set self.mixer = Mixer(...) in __init__")
        return mixer

    def mixed_step(self, batch):
        """``(out, loss)`` of a training batch ``(x, y)`` (or ``(x, y, index)``): the method's forward and loss."""
        x, y, index = _batch(batch)
        mixer = self._mixer()
        out = mixer(x, y, index=index)
        return out, mixer.loss(out)

    def training_step(self, batch, batch_idx):
        _, loss = self.mixed_step(batch)
        self.log("train_loss", loss.detach(), prog_bar=True)
        return loss

    def on_train_epoch_start(self) -> None:
        self._mixer().start_epoch(self.current_epoch + 1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[_KEY] = self._mixer().state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if _KEY in checkpoint:
            self._mixer().load_state_dict(checkpoint[_KEY])
