"""Run identity follows the data (dataset fingerprints), the one rule for relative paths, and the checks
validate makes that need a plugin's hooks (Dataset.shape, Method.check_model)."""
from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pytest

from mixcli.api import PluginError, file_fingerprint
from mixcli.errors import MixcliError
from mixcli.config.jobs import expand
from mixcli.config.spec import load_experiment
from mixcli_plugins.datasets.vision import CIFAR10, safe_unpickle

CSV_EXP = """\
name: fp
task: regression
dataset: {name: csv, path: data/d.csv, targets: [y]}
model: {name: mlp, widths: [4]}
train: {epochs: 1}
"""


def write_csv(path, scale=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a,b,y\n" + "".join(f"{i},{i % 3},{scale * i}\n" for i in range(12)))


def run_ids(path, *overrides):
    return [j.run_id for j in expand(load_experiment(path, list(overrides)))]


def test_rewritten_csv_labels_give_a_new_run_id(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(CSV_EXP)
    write_csv(tmp_path / "data" / "d.csv")
    first = run_ids(exp)
    assert run_ids(exp) == first  # stable while the data is unchanged
    write_csv(tmp_path / "data" / "d.csv", scale=2.0)  # same size class, every label rewritten
    assert run_ids(exp) != first
    cfg = expand(load_experiment(exp))[0].config
    data = (tmp_path / "data" / "d.csv").read_bytes()
    inner = hashlib.sha256(b"d.csv\0" + hashlib.sha256(data).digest()).hexdigest()[:16]
    assert cfg["data_fingerprint"] == "sha256:" + inner  # computed independently here


def test_large_files_are_fingerprinted_by_size_and_time(tmp_path):
    p = tmp_path / "big.bin"
    p.write_bytes(b"x" * 1000)
    a = file_fingerprint(p, hash_below=10)
    assert a.startswith("stat:") and file_fingerprint(p, hash_below=10) == a
    os.utime(p, ns=(1, 10**18))
    assert file_fingerprint(p, hash_below=10) != a
    assert file_fingerprint(tmp_path / "missing") is None


def test_bundled_data_has_no_fingerprint(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("name: d\ndataset: digits\nmodel: mlp\n")
    assert "data_fingerprint" not in expand(load_experiment(exp))[0].config


def test_relative_paths_follow_one_rule(tmp_path, monkeypatch):
    """In the file: relative to the file's folder, wherever mixcli runs; on the command line: the working
    folder."""
    sub = tmp_path / "exps"
    sub.mkdir()
    exp = sub / "exp.yaml"
    exp.write_text(CSV_EXP + "out: out/here\n")
    write_csv(sub / "data" / "d.csv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    e = load_experiment(exp)
    assert e.out == sub / "out" / "here"
    assert expand(e)[0].config["dataset"]["path"] == str(sub / "data" / "d.csv")
    write_csv(elsewhere / "mine.csv")
    e = load_experiment(exp, ["dataset.path=mine.csv", "out=o"])
    assert e.out.resolve() == (elsewhere / "o").resolve()
    assert os.path.samefile(expand(e)[0].config["dataset"]["path"], elsewhere / "mine.csv")


def test_model_is_checked_against_the_datasets_shape(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("name: m\ndataset: digits\nmodel: {name: cnn, width: 4}\n"
                   "method: {name: manifold_mixup, positions: [3]}\n")
    expand(load_experiment(exp))  # cnn has 3 stages: positions 0..4 exist
    with pytest.raises(MixcliError, match="--set method.positions: method: .*positions \\[9\\] are all beyond"):
        expand(load_experiment(exp, ["method.positions=[9]"]))
    with pytest.raises(MixcliError, match="model 'cnn': width must be >= 1"):
        expand(load_experiment(exp, ["model.width=0"]))


def test_safe_unpickler_reads_arrays_and_refuses_code(tmp_path):
    d = {"data": np.arange(12, dtype=np.uint8).reshape(2, 6), "labels": [1, 2], b"raw": "x"}
    back = safe_unpickle(pickle.dumps(d, protocol=2))
    assert np.array_equal(back["data"], d["data"]) and back["labels"] == [1, 2]
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with pytest.raises(pickle.UnpicklingError, match="refused"):
        safe_unpickle(pickle.dumps({"data": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        safe_unpickle(pickle.dumps(Evil(), protocol=0))
    assert not marker.exists()


def test_cifar_checksum_option(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in CIFAR10.MD5:
        (folder / name).write_bytes(pickle.dumps({"label_names": [], "data": [], "labels": []}))
    with pytest.raises(PluginError, match="not the official file .*checksum: false"):
        CIFAR10(root=str(tmp_path)).load()
    assert CIFAR10(root=str(tmp_path)).fingerprint() is None  # official files: pinned by their MD5
    assert CIFAR10(root=str(tmp_path), checksum=False).fingerprint().startswith("sha256:")
    with pytest.raises(PluginError, match="checksum"):
        CIFAR10(root=str(tmp_path), checksum="no")
