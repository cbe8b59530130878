"""checkpoint: {keep: last|best|both} and the per-step log (train.log_steps)."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml

from mixcli.data.device import DeviceData
from mixcli.training.engine import _plugin, autocast_for, evaluate

from conftest import TINY

EXP = TINY.replace("epochs: 3", "epochs: 3\n  log_steps: 1")


def test_keep_both_saves_the_best_epochs_weights_and_step_log(cli, write, tmp_path):
    out = tmp_path / "out"
    code, text = cli("run", write(EXP + "checkpoint: {keep: both}\n"), "--out", out, "--device", "cpu")
    assert code == 0, text
    run = pd.read_parquet(out / "runs").iloc[0]
    epochs = pd.read_parquet(out / "epochs").sort_values("epoch")
    job = out / "jobs" / run.run_id
    assert (job / "checkpoint.pt").exists()
    best = torch.load(job / "best.pt", weights_only=True)
    assert best["epoch"] == run.best_epoch == epochs.loc[epochs.val_accuracy.idxmax(), "epoch"]

    # the saved weights reproduce the best epoch's recorded test accuracy
    cfg = yaml.safe_load((job / "config.yaml").read_text())
    cpu = torch.device("cpu")
    data = _plugin("datasets", cfg["dataset"]).load()
    model = _plugin("models", cfg["model"], data.input_shape, data.out_dim)
    model.load_state_dict(best["model"])
    m = evaluate(model, DeviceData(data, cpu, cfg["seed"]), "test", "classification", 1024, autocast_for(cpu, False))
    at_best = epochs[epochs.epoch == run.best_epoch].iloc[0]
    assert m["accuracy"] == pytest.approx(at_best.test_accuracy, abs=1e-12)

    # every step logged: per epoch, the mean step loss is the epoch's train_loss and the last lr its lr
    steps = pd.read_parquet(job / "steps.parquet")
    assert list(steps.step) == list(range(1, len(steps) + 1)) and set(steps.epoch) == {1, 2, 3}
    per_epoch = steps.groupby("epoch").agg(loss=("loss", "mean"), lr=("lr", "last"))
    assert per_epoch.loss.to_numpy() == pytest.approx(epochs.train_loss.to_numpy(), rel=1e-5)
    assert per_epoch.lr.to_numpy() == pytest.approx(epochs.lr.to_numpy())


def test_keep_best_drops_the_last_checkpoint_and_keys_keep_run_ids(cli, write, tmp_path):
    out = tmp_path / "out"
    code, text = cli("run", write(TINY + "checkpoint: {keep: best}\n"), "--out", out, "--device", "cpu")
    assert code == 0, text
    rid = pd.read_parquet(out / "runs").run_id.iloc[0]
    assert (out / "jobs" / rid / "best.pt").exists() and not (out / "jobs" / rid / "checkpoint.pt").exists()
    assert not (out / "jobs" / rid / "steps.parquet").exists()
    # neither key is part of the run id: the default file has the same run, already finished
    code, text = cli("run", write(TINY, "plain.yaml"), "--out", out, "--device", "cpu")
    assert code == 0 and "already finished, skipped" in text
    code, text = cli("run", write(EXP, "steps.yaml"), "--dry-run")
    assert rid in text
    code, text = cli("validate", write(TINY + "checkpoint: {keep: worst}\n", "bad.yaml"))
    assert code == 2 and "checkpoint.keep: expected one of last, best, both" in text
