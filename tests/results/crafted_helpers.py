"""A small, valid output folder made without training (rows in the store's own schema), and the reader
commands run on it through the CLI: the ground the crafted-file tests and the result-file fuzzer plant their
files in."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

from mixcli.cli import app
from mixcli.results.store import arrow_table

METHODS = ("erm", "mixup")
SEEDS = (0, 1)
EPOCHS = 4
BINS = 5


def run_id(method: str, seed: int) -> str:
    return f"{method}-s{seed}-0123456789"


def config(method: str, seed: int) -> dict:
    return {"name": "tiny", "seed": seed, "task": "classification",
            "dataset": {"name": "digits", "val_size": 100}, "model": {"name": "mlp", "widths": [8]},
            "method": {"name": method, **({"alpha": 1.0} if method == "mixup" else {})},
            "loss": {"name": "soft_ce"}, "train": {"epochs": EPOCHS, "batch_size": 64},
            "eval": {"selection": "final", "extra": [{"name": "calibration", "bins": BINS}]}}


def make_out(out: Path) -> Path:
    """``out`` with 2 methods x 2 seeds of finished runs: runs, epochs, config.yaml and calibration.json."""
    rng = np.random.default_rng(0)
    for method in METHODS:
        for seed in SEEDS:
            rid = run_id(method, seed)
            acc = [0.5 + 0.1 * e + 0.01 * seed + (0.02 if method == "mixup" else 0) for e in range(EPOCHS)]
            eps = [{"run_id": rid, "epoch": e + 1, "train_loss": 2.0 - 0.3 * e, "lr": 0.1, "time_s": 0.5,
                    "test_accuracy": a, "test_nll": 1.5 - a, "test_ece": 0.1, "test_mean_recall": a,
                    "test_worst_class_recall": a / 2, "val_accuracy": a} for e, a in enumerate(acc)]
            row = {"run_id": rid, "experiment": "tiny", "method": method, "dataset": "digits", "model": "mlp",
                   "loss": "soft_ce", "task": "classification", "seed": seed, "status": "finished",
                   "attempts": 1, "config": json.dumps(config(method, seed)), "selection": "final",
                   "epochs": EPOCHS, "best_epoch": EPOCHS, "best_on": "val", "wall_time_s": 2.0,
                   "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:00:02+00:00",
                   "final_test_accuracy": acc[-1], "best_test_accuracy": acc[-1]}
            for table, rows in (("runs", [row]), ("epochs", eps)):
                (out / table).mkdir(parents=True, exist_ok=True)
                pq.write_table(arrow_table(rows, table), out / table / f"{rid}.parquet")
            job = out / "jobs" / rid
            job.mkdir(parents=True)
            (job / "config.yaml").write_text(json.dumps(config(method, seed)))  # JSON is YAML
            count = rng.integers(1, 20, BINS).astype(float)
            conf = count * np.linspace(0.3, 0.9, BINS)
            doc = {"epoch": EPOCHS, "temperature": 1.5, "bins": BINS, "n": int(count.sum()),
                   "before": {"count": count.tolist(), "conf": conf.tolist(), "correct": (conf * 0.8).tolist()},
                   "after": {"count": count.tolist(), "conf": conf.tolist(), "correct": (conf * 0.9).tolist()}}
            (job / "calibration.json").write_text(json.dumps(doc))
    (out / "claims").mkdir()
    return out


def reader_args(name: str, out: Path, tmp: Path) -> list[str]:
    """The command line of one reader of ``out`` (its destinations under ``tmp``)."""
    return {"compare": ["compare", str(out)],
            "curves": ["curves", str(out)],
            "reliability": ["reliability", str(out)],
            "export": ["export", str(out), "--to", "tensorboard", "--uri", str(tmp / "tb")],
            "inspect": ["inspect", str(out / "jobs" / run_id("mixup", 0))]}[name]


READERS = ("compare", "curves", "reliability", "export")


def invoke(*args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``mixcli ARGS`` in this process; an exception other than SystemExit
    is returned as its traceback text (so that the tests see it as one)."""
    r = CliRunner().invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        import traceback

        return 1, r.stdout, "Traceback (most recent call last):\n" + "".join(
            traceback.format_exception(r.exception))
    return r.exit_code, r.stdout, r.stderr


def sane(text: str, width: int = 200) -> None:
    """Every line is short plain text: no terminal escape or other control character, at most ``width``."""
    for line in text.splitlines():
        assert len(line) <= width, line[:300]
        bad = [c for c in line if (ord(c) < 32 and c != "\t") or 0x7f <= ord(c) <= 0x9f
               or 0x202a <= ord(c) <= 0x202e or 0x2066 <= ord(c) <= 0x2069]
        assert not bad, repr(line[:300])


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
