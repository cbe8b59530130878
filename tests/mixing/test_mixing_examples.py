"""The plain-PyTorch example and the Lightning integration train a few steps; Lightning checkpoints keep the
mixer's random state, so a resumed fit draws what an uninterrupted one would."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mixcli.api import PluginError
from mixcli.mixing import Mixer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name):
    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("args", [["--method", "cutmix"], ["--method", "manifold_mixup"],
                                  ["--method", "saliencymix"], ["--transform", "fmix"]])
def test_plain_pytorch_example_trains(args, tmp_path, capsys):
    ex = load("plain_pytorch")
    save = ["--save", str(tmp_path / "ck.pt")] if "--method" in args else []
    acc = ex.main([*args, "--epochs", "1", "--max-steps", "6", *save])
    assert 0.0 <= acc <= 1.0 and "6 steps" in capsys.readouterr().out
    if save:
        ck = torch.load(tmp_path / "ck.pt", weights_only=False)
        assert ck["mixer"]["step"] == 6


try:  # the lightning extra (in dev); without it only the Lightning tests are skipped
    import lightning
except ImportError:  # pragma: no cover
    lightning = None
needs_lightning = pytest.mark.skipif(lightning is None,
                                     reason='needs the lightning extra: pip install "mixcli[lightning]"')


@needs_lightning
def test_lightning_example_trains():
    ex = load("lightning_module")
    trainer, model = ex.main(["--method", "cutmix", "--epochs", "2", "--max-steps", "5"])
    assert trainer.global_step == 5 and model.mixer.state_dict()["step"] == 5
    assert torch.isfinite(trainer.callback_metrics["train_loss"])


def fit(module, epochs, root, ckpt_path=None, callbacks=()):
    from torch.utils.data import DataLoader, TensorDataset
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    trainer = lightning.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                                enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                                callbacks=list(callbacks))
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=16), ckpt_path=ckpt_path)
    return trainer


@needs_lightning
def test_lightning_checkpoint_resumes_the_mixer_exactly(tmp_path):
    ex = load("lightning_module")
    lightning.seed_everything(0, verbose=False)
    full = ex.DigitsNet("mixup")
    fit(full, 2, tmp_path / "a")
    lightning.seed_everything(0, verbose=False)
    half = ex.DigitsNet("mixup")
    fit(half, 1, tmp_path / "b")
    (ck,) = (tmp_path / "b").rglob("*.ckpt")
    resumed = ex.DigitsNet("mixup")
    fit(resumed, 2, tmp_path / "b", ckpt_path=str(ck))
    assert resumed.mixer.state_dict()["rng"] == full.mixer.state_dict()["rng"]
    assert resumed.mixer.state_dict()["step"] == full.mixer.state_dict()["step"] == 8
    assert resumed.mixer.state_dict()["rng"] != ex.DigitsNet("mixup").mixer.state_dict()["rng"]


@needs_lightning
def test_mixer_callback_for_a_module_with_its_own_training_step(tmp_path):
    from mixcli.mixing.lightning import MixerCallback

    class Own(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
            self.mixer = Mixer("cutmix", self.net, num_classes=10, seed=1)
            self.epochs_seen = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            out = self.mixer(x, y)
            self.epochs_seen.append(self.mixer.ctx.epoch)
            return self.mixer.loss(out)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    m = Own()
    trainer = fit(m, 2, tmp_path, callbacks=[MixerCallback(m.mixer)])
    assert trainer.global_step == 8 and sorted(set(m.epochs_seen)) == [1, 2]
    (ck,) = tmp_path.rglob("*.ckpt")
    state = torch.load(ck, weights_only=False)
    assert any("mixcli_mixer" in v for v in state["callbacks"].values())
    with pytest.raises(PluginError, match="needs a mixcli.mixing.Mixer"):
        MixerCallback(object())
