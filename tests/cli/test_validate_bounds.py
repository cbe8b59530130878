"""`validate` accepts exactly what `run` accepts: every evaluator option bounded, the evaluators' needs of the
data and the method checked before any data is loaded, and checkpoints (init_from, the timm model's) read
the way a run reads them (weights_only), so a pickled payload is one line and never runs."""
from __future__ import annotations

import os
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from mixcli.cli import app

BASE = """\
name: v
dataset: {name: digits}
model: {name: mlp, widths: [8]}
method: erm
train: {epochs: 1, batch_size: 64}
"""


def _invoke(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r.exit_code, r.stdout, r.stderr


def _refused_alike(path, expect: str) -> str:
    """validate and run (up to training) refuse ``path`` with the same single line, exit code 2."""
    lines = []
    for args in (["validate", path], ["run", path, "--dry-run"]):
        code, out, err = _invoke(*args)
        assert code == 2, out + err
        assert "Traceback" not in out + err
        assert len(err.strip().splitlines()) == 1, err
        line = " ".join(err.split())
        assert line.startswith("error: ") and expect in line, line
        lines.append(line)
    assert lines[0] == lines[1]
    return lines[0]


def _exp(tmp_path, extra: str = "", base: str = BASE, name: str = "exp.yaml"):
    p = tmp_path / name
    p.write_text(base + textwrap.dedent(extra))
    return p


def _evil_checkpoint(path, marker):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {"w": torch.zeros(2)}, "payload": Payload()}, path)


BOUNDS = [  # (eval.extra entry, what the one line says)
    ("{name: pgd, steps: 1000000000}", "steps must be an integer from 1 to 10000"),
    ("{name: pgd, steps: 1.0e+9}", "eval.extra[0].steps: expected"),
    ("{name: pgd, steps: 10001}", "steps must be an integer from 1 to 10000"),
    ("{name: pgd, steps: 0}", "steps must be an integer from 1 to 10000"),
    ("{name: pgd, eps: 300}", "eps must be <= 255 (1/255 pixel units"),
    ("{name: pgd, step: 0}", "step must be > 0, got 0"),
    ("{name: pgd, step: 256}", "step must be <= 255"),
    ("{name: pgd, random_start: 1}", "random_start"),
    ("{name: fgsm, eps: 1000}", "eps must be <= 255 (1/255 pixel units: 255 spans a pixel's whole range), got 1000"),
    ("{name: fgsm, eps: -1}", "eps must be >= 0, got -1"),
    ("{name: calibration, bins: 1000000000}", "bins must be an integer from 1 to 1000"),
    ("{name: calibration, bins: 1001}", "bins must be an integer from 1 to 1000"),
    ("{name: calibration, bins: 0}", "bins must be an integer from 1 to 1000"),
    ("{name: ood, temperature: 100000}", "temperature must be in (0, 10000.0], got 100000"),
    ("{name: ood, temperature: 0}", "temperature must be in (0, 10000.0], got 0"),
    ("{name: ood, max_images: 0}", "max_images must be an integer from 1 to 10000000 or null"),
    ("{name: ood, max_images: 100000000000}", "max_images must be an integer from 1 to 10000000 or null"),
    ("{name: ood, dataset: airfoil}", "OOD dataset 'airfoil' is a regression dataset of tabular features"),
    ("{name: ood, dataset: mnist}",
     "OOD dataset 'mnist' has images of shape (1, 28, 28), the in-distribution data images of shape (1, 8, 8)"),
    ("{name: ood, dataset: nosuch}", "nosuch"),
    ("{name: corruptions, severities: [6]}", "severities must be a non-empty list of integers in 1..5"),
    ("{name: corruptions, corruptions: []}", "corruptions must be a non-empty list of names"),
    ("automix_heads", "automix_heads reports the four heads of a learned mixer (automix, samix, adautomix); this experiment's method is 'erm', which has none"),
]


@pytest.mark.parametrize("entry,expect", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_evaluator_options_out_of_bounds_are_refused_by_validate_as_by_run(tmp_path, entry, expect):
    _refused_alike(_exp(tmp_path, f"eval:\n  extra: [{entry}]\n"), expect)


def test_the_bounds_themselves_are_accepted(tmp_path):
    p = _exp(tmp_path, "eval:\n  extra: [{name: pgd, steps: 10000, eps: 255, step: 255}, {name: calibration, "
                       "bins: 1000}, {name: ood, temperature: 10000, max_images: 10000000}]\n")
    code, out, err = _invoke("validate", p)
    assert code == 0, out + err


def test_corruptions_path_that_is_missing_or_empty_is_named(tmp_path):
    missing = tmp_path / "no" / "CIFAR-10-C"
    line = _refused_alike(_exp(tmp_path, f"eval:\n  extra: [{{name: corruptions, path: {missing}}}]\n"),
                          f"path {missing}: no such folder")
    assert "labels.npy" in line
    empty = tmp_path / "CIFAR-10-C"
    empty.mkdir()
    (empty / "labels.npy").write_bytes(b"")
    _refused_alike(_exp(tmp_path, f"eval:\n  extra: [{{name: corruptions, corruptions: [fog, snow], path: {empty}}}]\n"),
                   f"path {empty}: no fog.npy, snow.npy")


def test_corruptions_relative_path_is_resolved_from_the_experiment_file(tmp_path):
    (tmp_path / "c").mkdir()
    for f in ("labels.npy", "fog.npy"):
        (tmp_path / "c" / f).write_bytes(b"")
    code, out, err = _invoke("validate", _exp(tmp_path, "eval:\n  extra: [{name: corruptions, corruptions: [fog], "
                                                        "path: c}]\n"))
    assert code == 0, out + err


@pytest.mark.parametrize("dataset,key", [("{name: digits, val_size: 0}", "val_size"),
                                         ("{name: synthetic_images, num_classes: 10, n_val: 0}", "n_val")])
def test_calibration_without_a_validation_split_is_refused(tmp_path, dataset, key):
    base = BASE.replace("{name: digits}", dataset)
    _refused_alike(_exp(tmp_path, "eval:\n  extra: [calibration]\n", base=base),
                   f"calibration fits the temperature on the validation split, and dataset.{key} is 0")


def test_init_from_a_pickled_payload_is_refused_by_validate_and_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    parent = tmp_path / "parent"
    parent.mkdir()
    _evil_checkpoint(parent / "checkpoint.pt", marker)
    (parent / "config.yaml").write_text("method: {name: erm}\nmodel: {name: mlp, widths: [8]}\n"
                                        "dataset: {name: digits}\n")
    line = _refused_alike(_exp(tmp_path, f"init_from: {parent}\n"),
                          f"{parent / 'checkpoint.pt'} is not a weights-only checkpoint")
    assert "posix.system" in line or "os.system" in line
    assert not marker.exists()


def test_a_malicious_timm_checkpoint_is_one_line_and_never_runs(tmp_path):
    pytest.importorskip("timm")
    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "resnet.pt"
    _evil_checkpoint(ckpt, marker)
    base = BASE.replace("{name: mlp, widths: [8]}", f"{{name: timm, arch: resnet18, checkpoint: {ckpt}}}")
    line = _refused_alike(_exp(tmp_path, base=base), f"checkpoint: {ckpt} is not a weights-only checkpoint")
    assert "torch.save(model.state_dict(), PATH)" in line and ".safetensors" in line
    code, out, err = _invoke("run", _exp(tmp_path, base=base), "--out", tmp_path / "out", "--device", "cpu",
                             "--in-process")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a weights-only checkpoint" in err, err
    assert not marker.exists()


def test_the_timm_plugin_itself_refuses_a_pickled_payload_in_one_line(tmp_path):
    pytest.importorskip("timm")
    from mixcli.api import PluginError
    from mixcli_plugins.models.timm_model import read_state

    marker = tmp_path / "PWNED"
    _evil_checkpoint(tmp_path / "w.pt", marker)
    with pytest.raises(PluginError) as e:
        read_state(tmp_path / "w.pt")
    assert "\n" not in str(e.value) and "not a weights-only checkpoint" in str(e.value)
    assert not marker.exists()


def test_an_error_quoting_the_file_carries_no_terminal_escape(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(BASE.replace("{name: digits}", '{name: digits, "\\e]0;owned\\a\\e[2Jfoo\\u202e": 1}'))
    code, out, err = _invoke("validate", p)
    assert code == 2 and "unknown option ']0;owned[2Jfoo'" in err, err
    assert not any(c in out + err for c in ("\x1b", "\x07", "\u202e"))

