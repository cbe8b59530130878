"""A corpus of broken inputs (issue 12): every one is refused with exit code 2 and one line that names the
file, line or key, without a traceback, without writing outside --out; `validate` and `run --dry-run` agree.

Cases run in-process through typer's CliRunner; the named pipe and Ctrl-C cases use a subprocess.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mixcli.cli import app

BASE = """\
name: corpus
dataset: {name: digits}
model: {name: mlp, widths: [16]}
method: erm
train:
  epochs: 1
  batch_size: 64
  optimizer: {name: sgd, lr: 0.05}
seeds: [0]
"""
REG = """\
name: corpus
task: regression
dataset: {name: csv, path: data.csv, targets: [y]}
model: {name: mlp, widths: [8]}
train: {epochs: 1, batch_size: 4}
seeds: [0]
"""


def R(old: str, new: str, base: str = BASE) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


def A(extra: str, base: str = BASE) -> str:
    return base + extra


def T(extra: str) -> str:
    """BASE with ``extra`` added to its train section (line 9)."""
    opt = "  optimizer: {name: sgd, lr: 0.05}\n"
    return R(opt, opt + extra)


def bomb(where: str) -> str:
    lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i, c in enumerate("bcdefgh"):
        prev = "abcdefgh"[i]
        lines.append(f"{c}: &{c} [{', '.join(['*' + prev] * 9)}]")
    anchors = "\n".join("  " + x for x in lines)
    return f"{where}:\n{anchors}\n"


DEEP = "x: " + "[" * 200 + "]" * 200 + "\n"
BIGINT = "1" * 5000

# (id, file text, text the message must contain)
FILES = [
    ("empty", "", "the file is empty"),
    ("list", "- a\n- b\n", "exp.yaml:1: expected a mapping"),
    ("scalar", "just a string\n", "expected a mapping"),
    ("number", "42\n", "expected a mapping"),
    ("unclosed", "name: [unclosed\n", "YAML syntax error"),
    ("tab", "name: x\n\tdataset: digits\n", "YAML syntax error"),
    ("bad-indent", "name: x\n  dataset: digits\n model: mlp\n", "YAML syntax error"),
    ("typo-top", A("trian: {epochs: 3}\n"), "exp.yaml:10: trian: unknown key 'trian' (did you mean 'train'?)"),
    ("typo-method", R("method: erm", "method: mixpu"), "exp.yaml:4: method: unknown method 'mixpu'"),
    ("typo-dataset", R("{name: digits}", "{name: digitz}"), "exp.yaml:2: dataset.name: unknown dataset"),
    ("typo-model", R("{name: mlp, widths: [16]}", "{name: mpl}"), "exp.yaml:3: model.name: unknown model 'mpl'"),
    ("epochs-word", R("epochs: 1", "epochs: ten"), "exp.yaml:6: train.epochs: expected an integer"),
    ("epochs-zero", R("epochs: 1", "epochs: 0"), "exp.yaml:6: train.epochs"),
    ("epochs-neg", R("epochs: 1", "epochs: -3"), "exp.yaml:6: train.epochs"),
    ("epochs-huge", R("epochs: 1", "epochs: 1000000000000"), "exp.yaml:6: train.epochs: expected an integer in"),
    ("epochs-float", R("epochs: 1", "epochs: 1.5"), "exp.yaml:6: train.epochs"),
    ("epochs-bool", R("epochs: 1", "epochs: true"), "exp.yaml:6: train.epochs"),
    ("epochs-null", R("epochs: 1", "epochs: null"), "exp.yaml:6: train.epochs"),
    ("epochs-list", R("epochs: 1", "epochs: [1]"), "exp.yaml:6: train.epochs"),
    ("epochs-sci", R("epochs: 1", "epochs: 1e3"), "exp.yaml:6: train.epochs"),
    ("epochs-5000-digits", R("epochs: 1", "epochs: " + BIGINT), "exp.yaml"),
    ("batch-zero", R("batch_size: 64", "batch_size: 0"), "exp.yaml:7: train.batch_size"),
    ("batch-huge", R("batch_size: 64", "batch_size: 1073741824"), "exp.yaml:7: train.batch_size"),
    ("lr-neg", R("lr: 0.05", "lr: -1"), "exp.yaml:8: train.optimizer.lr: expected a finite number > 0"),
    ("lr-nan", R("lr: 0.05", "lr: .nan"), "exp.yaml:8: train.optimizer.lr"),
    ("lr-inf", R("lr: 0.05", "lr: .inf"), "exp.yaml:8: train.optimizer.lr"),
    ("lr-neginf", R("lr: 0.05", "lr: -.inf"), "exp.yaml:8: train.optimizer.lr"),
    ("lr-word", R("lr: 0.05", "lr: fast"), "exp.yaml:8: train.optimizer.lr"),
    ("lr-zero", R("lr: 0.05", "lr: 0"), "exp.yaml:8: train.optimizer.lr"),
    ("momentum-1", R("lr: 0.05", "lr: 0.05, momentum: 1.0"), "train.optimizer.momentum"),
    ("wd-neg", R("lr: 0.05", "lr: 0.05, weight_decay: -1"), "train.optimizer.weight_decay"),
    ("nesterov-str", R("lr: 0.05", "lr: 0.05, nesterov: 'yes'"), "train.optimizer.nesterov"),
    ("classifier-lr-nan", R("lr: 0.05", "lr: 0.05, classifier_lr: .nan"), "train.optimizer.classifier_lr"),
    ("optimizer-name", R("{name: sgd, lr: 0.05}", "{name: lbfgs}"), "exp.yaml:8: train.optimizer.name"),
    ("optimizer-typo", R("lr: 0.05", "lrr: 0.05"), "train.optimizer.lrr: unknown key 'lrr' (did you mean 'lr'?)"),
    ("optimizer-int", R("{name: sgd, lr: 0.05}", "5"), "exp.yaml:8: train.optimizer: expected a mapping"),
    ("schedule-name", T("  schedule: linear\n"), "exp.yaml:9: train.schedule.name"),
    ("milestones-int", T("  schedule: {name: multistep, milestones: 5}\n"), "train.schedule.milestones: expected a list"),
    ("milestones-zero", T("  schedule: {name: multistep, milestones: [0]}\n"), "train.schedule.milestones"),
    ("milestones-word", T("  schedule: {name: multistep, milestones: [a]}\n"), "train.schedule.milestones"),
    ("milestones-huge", T("  schedule: {name: multistep, milestones: [1000000000000]}\n"), "train.schedule.milestones"),
    ("gamma-zero", T("  schedule: {name: multistep, gamma: 0}\n"), "train.schedule.gamma"),
    ("gamma-two", T("  schedule: {name: multistep, gamma: 2}\n"), "train.schedule.gamma"),
    ("gamma-nan", T("  schedule: {name: multistep, gamma: .nan}\n"), "train.schedule.gamma"),
    ("warmup-too-long", T("  schedule: {warmup_epochs: 5}\n"), "train.schedule.warmup_epochs"),
    ("warmup-neg", T("  schedule: {warmup_epochs: -1}\n"), "train.schedule.warmup_epochs"),
    ("precision", T("  precision: fp16\n"), "exp.yaml:9: train.precision"),
    ("compile-str", T("  compile: 'yes'\n"), "exp.yaml:9: train.compile"),
    ("freeze-bn-str", T("  freeze_bn: 'no'\n"), "train.freeze_bn"),
    ("iterations-and-epochs", T("  iterations: 10\n"), "train.iterations: give either"),
    ("iterations-zero", R("  epochs: 1\n", "  iterations: 0\n"), "train.iterations"),
    ("ipe-alone", T("  iterations_per_epoch: 5\n"), "train.iterations_per_epoch: only meaningful"),
    ("train-int", R("train:\n  epochs: 1\n  batch_size: 64\n  optimizer: {name: sgd, lr: 0.05}\n", "train: 5\n"),
     "exp.yaml:5: train: expected a mapping"),
    ("train-list", R("train:\n  epochs: 1\n  batch_size: 64\n  optimizer: {name: sgd, lr: 0.05}\n",
                     "train: [a]\n"), "exp.yaml:5: train: expected a mapping"),
    ("eval-every-zero", A("eval: {every: 0}\n"), "exp.yaml:10: eval.every"),
    ("eval-selection", A("eval: {selection: worst}\n"), "exp.yaml:10: eval.selection"),
    ("eval-batch-neg", A("eval: {batch_size: -1}\n"), "exp.yaml:10: eval.batch_size"),
    ("eval-typo", A("eval: {evry: 1}\n"), "eval.evry: unknown key 'evry' (did you mean 'every'?)"),
    ("seeds-empty", R("seeds: [0]", "seeds: []"), "exp.yaml:9: seeds"),
    ("seeds-repeated", R("seeds: [0]", "seeds: [0, 0]"), "exp.yaml:9: seeds: seeds are repeated"),
    ("seeds-negative", R("seeds: [0]", "seeds: [-1]"), "exp.yaml:9: seeds: expected seeds in"),
    ("seeds-2**70", R("seeds: [0]", "seeds: [1180591620717411303424]"), "exp.yaml:9: seeds: expected seeds in"),
    ("seeds-billion", R("seeds: [0]", "seeds: 1000000000"), "exp.yaml:9: seeds: expected at most"),
    ("seeds-zero", R("seeds: [0]", "seeds: 0"), "exp.yaml:9: seeds"),
    ("seeds-word", R("seeds: [0]", "seeds: abc"), "exp.yaml:9: seeds"),
    ("seeds-float", R("seeds: [0]", "seeds: [1.5]"), "exp.yaml:9: seeds"),
    ("seeds-bool", R("seeds: [0]", "seeds: [true]"), "exp.yaml:9: seeds"),
    ("seeds-map", R("seeds: [0]", "seeds: {a: 1}"), "exp.yaml:9: seeds"),
    ("name-missing", R("name: corpus\n", ""), "name: expected a non-empty string"),
    ("name-int", R("name: corpus", "name: 5"), "exp.yaml:1: name: expected a non-empty string"),
    ("name-empty", R("name: corpus", "name: ''"), "exp.yaml:1: name"),
    ("name-blank", R("name: corpus", "name: '   '"), "exp.yaml:1: name"),
    ("name-escape", R("name: corpus", "name: ../../../escaped"), "exp.yaml:1: name: expected a plain name"),
    ("name-absolute", R("name: corpus", "name: /tmp/abs"), "exp.yaml:1: name: expected a plain name"),
    ("name-nul", R("name: corpus", 'name: "a\\0b"'), "exp.yaml:1: name: expected a plain name"),
    ("name-dotdot", R("name: corpus", "name: '..'"), "exp.yaml:1: name: expected a plain name"),
    ("name-dot", R("name: corpus", "name: '.'"), "exp.yaml:1: name: expected a plain name"),
    ("name-backslash", R("name: corpus", 'name: "a\\\\b"'), "exp.yaml:1: name: expected a plain name"),
    ("name-tab", R("name: corpus", 'name: "a\\tb"'), "exp.yaml:1: name: expected a plain name"),
    ("name-newline", R("name: corpus", 'name: "a\\nb"'), "exp.yaml:1: name: expected a plain name"),
    ("name-long", R("name: corpus", "name: " + "n" * 300), "exp.yaml:1: name"),
    ("name-map", R("name: corpus", "name: {a: 1}"), "exp.yaml:1: name"),
    ("dataset-missing", R("dataset: {name: digits}\n", ""), "dataset: missing required key 'dataset'"),
    ("model-missing", R("model: {name: mlp, widths: [16]}\n", ""), "model: missing required key 'model'"),
    ("out-int", A("out: 5\n"), "exp.yaml:10: out: expected a path"),
    ("out-list", A("out: [a]\n"), "exp.yaml:10: out: expected a path"),
    ("out-bool", A("out: true\n"), "exp.yaml:10: out: expected a path"),
    ("out-empty", A("out: ''\n"), "exp.yaml:10: out: expected a path"),
    ("out-nul", A('out: "a\\0b"\n'), "exp.yaml:10: out: expected a path without control characters"),
    ("out-map", A("out: {a: 1}\n"), "exp.yaml:10: out: expected a path"),
    ("task-typo", R("name: corpus\n", "name: corpus\ntask: regresion\n"), "exp.yaml:2: task"),
    ("task-null", R("name: corpus\n", "name: corpus\ntask: [1]\n"), "exp.yaml:2: task"),
    ("task-mismatch", R("name: corpus\n", "name: corpus\ntask: regression\n"),
     "dataset 'digits' supports task classification, not regression"),
    ("method-task", R("method: erm", "method: cmixup"), "method 'cmixup' supports task regression"),
    ("method-no-name", R("method: erm", "method: {alpha: 1}"), "exp.yaml:4: method: expected a method name"),
    ("method-list", R("method: erm", "method: [mixup]"), "exp.yaml:4: method: expected a method name"),
    ("method-int", R("method: erm", "method: 5"), "exp.yaml:4: method"),
    ("method-opt-typo", R("method: erm", "method: {name: mixup, alpah: 0.2}"),
     "method.alpah: unknown option 'alpah' for method 'mixup' (did you mean 'alpha'?)"),
    ("method-opt-type", R("method: erm", "method: {name: mixup, alpha: fast}"), "method.alpha: expected a number"),
    ("method-opt-range", R("method: erm", "method: {name: mixup, alpha: -1}"), "method 'mixup': alpha must be >= 0"),
    ("method-opt-nan", R("method: erm", "method: {name: mixup, alpha: .nan}"), "method.alpha: expected a finite"),
    ("method-prob", R("method: erm", "method: {name: mixup, prob: 2}"), "exp.yaml:4: method"),
    ("off-after-neg", R("method: erm", "method: {name: mixup, off_after_epoch: -1}"), "method.off_after_epoch"),
    ("off-after-str", R("method: erm", "method: {name: mixup, off_after_epoch: '5'}"), "method.off_after_epoch"),
    ("off-after-beyond", R("method: erm", "method: {name: mixup, off_after_epoch: 5}"),
     "exp.yaml:4: method.off_after_epoch: mixing would never be switched off"),
    ("manifold-positions", R("method: erm", "method: {name: manifold_mixup, positions: [7]}"),
     "method 'manifold_mixup' with model 'mlp': positions [7] are all beyond this model"),
    ("alignmix-mlp", R("method: erm", "method: alignmix"), "method 'alignmix' with model 'mlp': alignmix aligns"),
    ("manifold-neg", R("method: erm", "method: {name: manifold_mixup, positions: [-1]}"), "exp.yaml:4: method"),
    ("model-widths-0", R("{name: mlp, widths: [16]}", "{name: mlp, widths: [0]}"), "exp.yaml:3: model: model 'mlp': widths"),
    ("model-width-neg", R("{name: mlp, widths: [16]}", "{name: cnn, width: -4}"), "exp.yaml:3: model: model 'cnn': width"),
    ("model-activation", R("{name: mlp, widths: [16]}", "{name: mlp, activation: swish}"), "model 'mlp': activation"),
    ("model-dropout", R("{name: mlp, widths: [16]}", "{name: mlp, dropout: 1.5}"), "model 'mlp': dropout"),
    ("model-widths-int", R("{name: mlp, widths: [16]}", "{name: mlp, widths: 5}"), "model.widths: expected a list"),
    ("model-wrn-depth", R("{name: mlp, widths: [16]}", "{name: wrn, depth: 11}"), "model 'wrn': depth"),
    ("model-typo-opt", R("{name: mlp, widths: [16]}", "{name: mlp, widht: 3}"), "model.widht: unknown option"),
    ("model-null", R("{name: mlp, widths: [16]}", "null"), "exp.yaml:3: model"),
    ("loss-unknown", A("loss: nope\n"), "exp.yaml:10: loss: unknown loss 'nope'"),
    ("loss-task", A("loss: mse\n"), "loss 'mse' supports task regression"),
    ("dataset-int", R("{name: digits}", "5"), "exp.yaml:2: dataset"),
    ("fraction-zero", R("{name: digits}", "{name: digits, fraction: 0}"), "exp.yaml:2: dataset: dataset 'digits': fraction"),
    ("fraction-big", R("{name: digits}", "{name: digits, fraction: 1.5}"), "dataset 'digits': fraction"),
    ("fraction-nan", R("{name: digits}", "{name: digits, fraction: .nan}"), "dataset.fraction: expected a finite"),
    ("val-size-neg", R("{name: digits}", "{name: digits, val_size: -1}"), "dataset 'digits': val_size"),
    ("imbalance-small", R("{name: digits}", "{name: digits, imbalance: 0.5}"), "dataset 'digits': imbalance"),
    ("csv-no-options", R("{name: digits}", "{name: csv}", R("name: corpus\n", "name: corpus\ntask: regression\n")),
     "dataset 'csv' needs the option(s) 'path', 'targets'"),
    ("csv-no-file", R("data.csv", "nofile.csv", REG), "nofile.csv: no such file"),
    ("grid-empty", A("grid: {}\n"), "exp.yaml:10: grid: the grid is empty"),
    ("grid-scalar", A("grid:\n  method: erm\n"), "exp.yaml:11: grid.method: expected a non-empty list"),
    ("grid-empty-list", A("grid:\n  method: []\n"), "grid.method: expected a non-empty list"),
    ("grid-unknown", A("grid:\n  nme: [a]\n"), "grid.nme: cannot vary 'nme'"),
    ("grid-seeds", A("grid:\n  seeds: [1]\n"), "grid.seeds: cannot vary 'seeds'"),
    ("grid-int", A("grid: 5\n"), "exp.yaml:10: grid: expected a mapping"),
    ("grid-list-int", A("grid: [5]\n"), "exp.yaml:10: grid: expected a mapping"),
    ("grid-int-key", A("grid: {1: [a]}\n"), "grid keys must be dotted key names"),
    ("grid-entry", A("grid:\n  method: [erm, {name: mixup, alpha: -2}]\n"),
     "grid.method[1] (line 11): method: method 'mixup': alpha must be >= 0"),
    ("grid-entry-block", A("grid:\n  train.epochs:\n    - 1\n    - 0\n"), "grid.train.epochs[1] (line 13): train.epochs"),
    ("grid-list-entry", A("grid:\n  - {method: [erm]}\n  - {train.epochs: [0]}\n"), "grid[1].train.epochs[0]"),
    ("grid-shadows-typo", R("method: erm", "method: mixpu") + "grid:\n  method: [erm, mixup]\n",
     "exp.yaml:4: method: unknown method 'mixpu'"),
    ("grid-too-many-jobs", R("seeds: [0]", "seeds: 6000") + "grid:\n  method: [erm, mixup]\n", "jobs; one file may describe"),
    ("repeated-top", A("name: again\n"), "exp.yaml:10: key 'name' is repeated (first on line 1)"),
    ("repeated-nested", R("  epochs: 1\n", "  epochs: 1\n  epochs: 2\n"), "exp.yaml:7: key 'epochs' is repeated (first on line 6)"),
    ("repeated-flow", R("{name: digits}", "{name: digits, name: digits}"), "exp.yaml:2: key 'name' is repeated"),
    ("bomb-epochs", R("  epochs: 1\n", "  epochs: {" + ", ".join(
        f"{c}: &{c} [{', '.join(['*' + 'abcdefgh'[i - 1]] * 9) if i else '1, 1, 1, 1, 1, 1, 1, 1, 1'}]"
        for i, c in enumerate("abcdefgh")) + "}\n"), "exp.yaml:6: the YAML expands to more than"),
    ("bomb-seeds", R("seeds: [0]\n", "") + bomb("seeds"), "is this an alias bomb?"),
    ("bomb-unknown", A(bomb("junk")), "is this an alias bomb?"),
    ("recursive-alias", A("junk: &a [1, *a]\n"), "recursive YAML"),
    ("deep-nesting", A(DEEP), "nested too deeply"),
    ("python-tag", A('junk: !!python/object/apply:os.system ["touch PWNED"]\n'), "exp.yaml:10"),
    ("custom-tag", A("junk: !secret x\n"), "exp.yaml:10"),
    ("init-int", A("init_from: 5\n"), "exp.yaml:10: init_from: expected a run id"),
    ("init-no-file", A("init_from: {experiment: nope.yaml}\n"), "no such experiment file"),
    ("init-typo", A("init_from: {experment: a.yaml}\n"), "init_from.experment: unknown key"),
    ("init-seed-str", A("init_from: {experiment: a.yaml, seed: x}\n"), "init_from.seed"),
    ("init-no-run", A("init_from: no-such-run\n"), "init_from: 'no-such-run' is neither a run id"),
    ("init-garbage-config", A("init_from: parent\n"), "init_from:"),
    ("init-garbage-ckpt", A("init_from: badckpt\n"), "is not a PyTorch checkpoint"),
]

SETS = [  # (id, --set values, expected)
    ("no-equals", ["train.epochs"], "expected KEY=VALUE"),
    ("empty-key", ["=5"], "the key before '=' is empty"),
    ("epochs-zero", ["train.epochs=0"], "error: --set train.epochs: expected an integer in [1, 1000000], got 0"),
    ("epochs-word", ["train.epochs=ten"], "--set train.epochs"),
    ("epochs-huge", ["train.epochs=1000000000000"], "--set train.epochs"),
    ("epochs-unparsable", ["train.epochs=["], "--set train.epochs"),
    ("lr-nan", ["train.optimizer.lr=.nan"], "--set train.optimizer.lr"),
    ("name-escape", ["name=../x"], "--set name: expected a plain name"),
    ("name-slash", ["name=a/b"], "--set name: expected a plain name"),
    ("seeds-neg", ["seeds=[-1]"], "--set seeds"),
    ("seeds-billion", ["seeds=1000000000"], "--set seeds"),
    ("out-int", ["out=5"], "--set out: expected a path"),
    ("unknown-key", ["trian.epochs=3"], "--set trian.epochs: trian"),
    ("method-typo", ["method=mixpu"], "--set method: unknown method 'mixpu'"),
    ("model-widths", ["model.widths=[0]"], "--set model.widths: model"),
    ("recursive", ["train.epochs=&a [*a]"], "--set train.epochs"),
    ("fraction", ["dataset.fraction=2"], "--set dataset.fraction: dataset"),
    ("positions", ["method=manifold_mixup", "method.positions=[9]"], "method 'manifold_mixup' with model 'mlp'"),
    ("loss", ["loss=nope"], "--set loss: unknown loss 'nope'"),
    ("grid-typo", ["grid.method=[erm, mixpu]"], "unknown method 'mixpu'"),
    ("eval-every", ["eval.every=0"], "--set eval.every"),
    ("off-after", ["method=mixup", "method.off_after_epoch=3"], "--set method.off_after_epoch"),
    ("shadowed", ["method.alpha=0.2"], "--set method.alpha: has no effect: grid.method sets"),
    ("shadowed-exact", ["train.epochs=2"], "has no effect: grid.train.epochs"),
]
SET_BASE = {"shadowed": A("grid:\n  method: [erm, mixup]\n"), "shadowed-exact": A("grid:\n  train.epochs: [1, 2]\n")}

CSV_OK = "a,b,y\n" + "".join(f"{i},{i % 3},{2 * i}\n" for i in range(20))
DATA = [  # (id, data.csv text or None, experiment text, expected; validate refuses it already?)
    ("csv-duplicate-columns", CSV_OK.replace("a,b,y", "a,a,y"), REG, "line 1: the column name 'a' appears twice", True),
    ("csv-missing-target", CSV_OK.replace("a,b,y", "a,b,z"), REG, "no column 'y' (from targets)", True),
    ("csv-empty", "", REG, "data.csv: the file is empty", True),
    ("csv-missing-feature", CSV_OK, R("targets: [y]", "targets: [y], features: [q]", REG), "no column 'q'", True),
    ("csv-target-is-feature", CSV_OK, R("targets: [y]", "targets: [y], features: [y]", REG), "cannot be both", True),
    ("csv-non-numeric", CSV_OK.replace("3,0,6", "3,zero,6"), REG, "line 5, column 'b'", False),
    ("csv-nan-label", CSV_OK.replace("3,0,6", "3,0,nan"), REG, "line 5, column 'y'", False),
    ("csv-header-only", "a,b,y\n", REG, "data.csv: no data rows", False),
    ("csv-binary", "\x00\x01\x02garbage", REG, "data.csv", None),
]


# ----------------------------------------------------------------------------------------------- helpers
@pytest.fixture
def env(tmp_path, monkeypatch):
    """A scratch folder as the working directory; ``snap()`` lists every file under tmp_path."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # a parent run whose config.yaml is garbage, and one whose checkpoint is garbage
    (work / "parent").mkdir()
    (work / "parent" / "checkpoint.pt").write_bytes(_checkpoint())
    (work / "parent" / "config.yaml").write_text("{{{ not yaml at all")
    (work / "badckpt").mkdir()
    (work / "badckpt" / "checkpoint.pt").write_bytes(b"\x80\x04garbage, not a checkpoint")
    (work / "badckpt" / "config.yaml").write_text("method: {name: erm}\nmodel: {name: mlp}\n")
    return work


def _checkpoint() -> bytes:
    import io
    buf = io.BytesIO()
    torch.save({"model": {}}, buf)
    return buf.getvalue()


def snap(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def invoke(*args) -> tuple[int, str, str]:
    """(exit code, stdout and stderr together, stderr)."""
    r = CliRunner().invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.output, r.stderr


def refused(code: int, out: str, err: str, expect: str, warnings_ok: bool = False) -> str:
    """Exit 2, no traceback, one line on stderr that contains ``expect``; returns that line. With
    ``warnings_ok``, 'warning:' lines may precede it (e.g. a damaged results file skipped)."""
    assert code == 2, out
    assert "Traceback" not in out, out
    if warnings_ok:
        err = "\n".join(line for line in err.splitlines() if not line.startswith("warning: "))
    assert len(err.strip().splitlines()) == 1, f"expected one line on stderr, got:\n{err}"
    msg = " ".join(err.split())
    assert msg.startswith("error: ") and expect in msg, msg
    return msg


def failed_run(code: int, out: str, err: str, expect: str) -> None:
    """A bad data file found when the run loads it: exit 2, no traceback, the reason on stderr."""
    assert code == 2, out
    assert "Traceback" not in out, out
    assert expect in " ".join(err.split()), err


def check_both(env: Path, path: Path, expect: str, *extra: str) -> None:
    """validate and run --dry-run refuse alike, and nothing is written outside --out."""
    before = snap(env.parent)
    out = env.parent / "out"
    v = refused(*invoke("validate", path, *extra), expect)
    d = refused(*invoke("run", path, "--dry-run", "--out", out, *extra), expect)
    assert v == d.replace(str(out), "results/corpus")  # the same message (the output folder aside)
    assert snap(env.parent) - before <= {"out"}, snap(env.parent) - before
    assert not (env / "PWNED").exists()


# ---------------------------------------------------------------------------------------------- the corpus
@pytest.mark.parametrize("text,expect", [c[1:] for c in FILES], ids=[c[0] for c in FILES])
def test_bad_experiment_file(env, text, expect):
    (env / "data.csv").write_text(CSV_OK)
    path = env / "exp.yaml"
    path.write_text(text)
    check_both(env, path, expect)


@pytest.mark.parametrize("values,expect", [c[1:] for c in SETS], ids=[c[0] for c in SETS])
def test_bad_override(env, request, values, expect):
    path = env / "exp.yaml"
    path.write_text(SET_BASE.get(request.node.callspec.id, BASE))
    check_both(env, path, expect, *[x for v in values for x in ("--set", v)])


@pytest.mark.parametrize("csv,text,expect,at_validate", [c[1:] for c in DATA], ids=[c[0] for c in DATA])
def test_bad_data_file(env, csv, text, expect, at_validate):
    (env / "data.csv").write_text(csv)
    path = env / "exp.yaml"
    path.write_text(text)
    out = env.parent / "out"
    v = invoke("validate", path)
    d = invoke("run", path, "--dry-run", "--out", out)
    assert v[0] == d[0], (v, d)
    if at_validate:
        check_both(env, path, expect)
    elif at_validate is False:
        assert v[0] == 0, v
    before = snap(env.parent)
    code, both, err = invoke("run", path, "--out", out)
    failed_run(code, both, err, expect)
    assert {p for p in snap(env.parent) - before if not p.startswith("out")} == set()


def _write_cifar(root: Path, payload=None) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": list(range(10))}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    if payload is not None:
        (folder / "data_batch_1").write_bytes(payload)


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


CIFAR = """\
name: cifar
dataset: {{name: cifar10, root: data, checksum: {checksum}}}
model: {{name: mlp, widths: [8]}}
train: {{epochs: 1, batch_size: 8}}
"""


@pytest.mark.parametrize("case,checksum,expect", [
    ("malicious-pickle", "false", "refused to load 'posix.system'"),
    ("truncated-pickle", "false", "cannot read CIFAR file"),
    ("not-official", "true", "is not the official file (MD5"),
    ("out-of-range-label", "false", "labels in"),
])
def test_bad_cifar_files(env, case, checksum, expect):
    target = env / "PWNED"
    payload = {"malicious-pickle": pickle.dumps(_Evil(str(target))),
               "truncated-pickle": pickle.dumps({"data": np.zeros((10, 3072), np.uint8), "labels": [0] * 10})[:50],
               "not-official": None,
               "out-of-range-label": pickle.dumps({"data": np.zeros((10, 3072), np.uint8), "labels": [12] * 10})}[case]
    if case == "malicious-pickle":
        expect = f"refused to load '{os.system.__module__}.system'"  # posix.system on Linux
    _write_cifar(env / "data", payload)
    path = env / "exp.yaml"
    path.write_text(CIFAR.format(checksum=checksum))
    assert invoke("validate", path)[0] == 0  # the files are read when the run starts
    failed_run(*invoke("run", path, "--out", env.parent / "out"), expect)
    assert not target.exists(), "the crafted pickle ran code"


def test_labels_out_of_range_name_the_dataset(env, monkeypatch):
    """A third-party dataset returning labels beyond num_classes: a clear message, not a torch index error."""
    from mixcli_plugins.datasets.digits import Digits

    real = Digits.load

    def broken(self):
        b = real(self)
        b.train.y[:3] = 99
        return b

    monkeypatch.setattr(Digits, "load", broken)
    path = env / "exp.yaml"
    path.write_text(BASE)
    failed_run(*invoke("run", path, "--out", env.parent / "out", "--in-process"),  # the patch reaches the job
               "dataset 'digits': the train split has 3 label(s) outside [0, 10) (found 0..99)")


# --------------------------------------------------------------------------------------- command lines
def _results(env: Path, kind: str) -> Path:
    d = env / "res"
    (d / "runs").mkdir(parents=True)
    if kind == "garbage-parquet":
        (d / "runs" / "x.parquet").write_text("not parquet")
    elif kind == "truncated-parquet":
        (d / "runs" / "x.parquet").write_bytes(b"PAR1xxxxPAR1")
    elif kind == "foreign-parquet":
        pd.DataFrame({"foo": [1]}).to_parquet(d / "runs" / "x.parquet")
    elif kind == "bad-config":
        pd.DataFrame({"run_id": ["x"], "status": ["finished"], "config": ["{not json"]}).to_parquet(
            d / "runs" / "x.parquet")
    return d


CLI = [  # (id, args builder, expected)
    ("validate-dir", lambda e: ["validate", e], "is a directory"),
    ("validate-missing", lambda e: ["validate", e / "nope.yaml"], "nope.yaml: no such experiment file"),
    ("validate-binary", lambda e: ["validate", _file(e, "bin.yaml", b"\xff\xfe\x00bad")], "not UTF-8 text"),
    ("validate-huge", lambda e: ["validate", _file(e, "big.yaml", b"#" * 2_000_000)], "a YAML experiment file may have at most"),
    ("run-dry-missing", lambda e: ["run", e / "nope.yaml", "--dry-run"], "no such experiment file"),
    ("run-bad-device", lambda e: ["run", _file(e, "ok.yaml", BASE.encode()), "--device", "tpu", "--out", e / "o"],
     "--device tpu"),
    ("compare-missing", lambda e: ["compare", e / "nowhere"], "no results here"),
    ("compare-format", lambda e: ["compare", e, "--format", "xml"], "--format xml"),
    ("compare-split", lambda e: ["compare", e, "--split", "train"], "--split train"),
    ("compare-garbage-parquet", lambda e: ["compare", _results(e, "garbage-parquet")], "res: no runs recorded yet"),
    ("compare-truncated-parquet", lambda e: ["compare", _results(e, "truncated-parquet")], "res: no runs recorded yet"),
    ("curves-garbage-parquet", lambda e: ["curves", _results(e, "garbage-parquet")], "res"),
    ("curves-empty", lambda e: ["curves", _results(e, "empty")], "res"),
    ("compare-foreign", lambda e: ["compare", _results(e, "foreign-parquet")], "res: no runs recorded yet"),
    ("curves-foreign", lambda e: ["curves", _results(e, "foreign-parquet")], "res"),
    ("compare-bad-config", lambda e: ["compare", _results(e, "bad-config")], "'config' column is not a JSON"),
    ("run-out-is-file", lambda e: ["run", _file(e, "ok.yaml", BASE.encode()), "--out", _file(e, "f", b"")],
     "not writable"),
    ("list-kind", lambda e: ["list", "metods"], "unknown plugin kind 'metods'"),
    ("inspect-not-run", lambda e: ["inspect", e], "not a run directory"),
    ("inspect-garbage-config", lambda e: ["inspect", e / "parent"], "parent/config.yaml"),
    ("inspect-list-config", lambda e: ["inspect", _run_dir(e, "- a\n- b\n")], "not a mixcli run configuration"),
    ("inspect-unknown-method", lambda e: ["inspect", _run_dir(e, "method: {name: nosuch}\n")], "unknown method 'nosuch'"),
    ("inspect-bomb-config", lambda e: ["inspect", _run_dir(e, bomb("method"))], "alias bomb"),
    ("inspect-erm", lambda e: ["inspect", _run_dir(e, "method: {name: erm}\n")], "records nothing to inspect"),
]


def _file(env: Path, name: str, data: bytes) -> Path:
    p = env / name
    p.write_bytes(data)
    return p


def _run_dir(env: Path, config: str) -> Path:
    d = env / "run"
    d.mkdir()
    (d / "config.yaml").write_text(config)
    return d


@pytest.mark.parametrize("build,expect", [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_bad_command_line(env, request, build, expect):
    before = snap(env.parent)
    args = build(env)
    made = snap(env.parent) - before
    code, out, err = invoke(*args)
    refused(code, out, err, expect, warnings_ok=True)
    if "parquet" in request.node.callspec.id or "foreign" in request.node.callspec.id:
        assert "skipped" in err and "x.parquet" in err  # the damaged or foreign file is named in a warning
    assert {p for p in snap(env.parent) - before - made if not p.startswith("work/o")} == set()


def test_corpus_size():
    n = len(FILES) + len(SETS) + len(DATA) + len(CLI) + 4 + 1
    assert n >= 150, n


# ------------------------------------------------------------------------------------- subprocess cases
def _mixcli() -> list[str]:
    return [sys.executable, "-c", "from mixcli.cli import main; main()"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need POSIX")
def test_validate_refuses_a_named_pipe(tmp_path):
    fifo = tmp_path / "exp.yaml"
    os.mkfifo(fifo)
    r = subprocess.run(_mixcli() + ["validate", str(fifo)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "not a regular file" in r.stderr and "Traceback" not in r.stderr


def test_alias_bomb_is_refused_fast_in_bounded_memory(tmp_path):
    """The 599-byte bomb of the issue: refused in well under a second beyond start-up, a few MB at most."""
    import tracemalloc

    from mixcli.errors import MixcliError
    from mixcli.config.spec import load_experiment

    p = tmp_path / "bomb.yaml"
    p.write_text(dict((c[0], c[1]) for c in FILES)["bomb-epochs"])
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(MixcliError, match="alias bomb"):
        load_experiment(p)
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 2.0 and peak < 50 * 2**20, (elapsed, peak)


def test_ctrl_c_while_importing_prints_one_line(tmp_path):
    """SIGINT at several moments of start-up: exit 130 (or 2), never a traceback."""
    exp = tmp_path / "exp.yaml"
    exp.write_text(BASE)
    for delay in (1.0, 2.5):
        p = subprocess.Popen(_mixcli() + ["validate", str(exp)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        if "init_import_site" in err:  # still in the interpreter's own start-up, before any mixcli code
            continue
        assert "Traceback" not in err, err
        # -SIGINT: the signal landed while the interpreter was already shutting down (nothing left to report)
        assert p.returncode in (0, 1, 2, 130, -signal.SIGINT), (p.returncode, err)
