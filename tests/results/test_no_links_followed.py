"""Nothing outside the output folder is written or deleted through a link planted inside it (mixcli.fs):
traceback files, evaluator artifacts, a symlinked run directory, its temporaries, the claims."""
from __future__ import annotations

import os

import pandas as pd
import pytest
from conftest import TINY

from mixcli import fs
from mixcli.api import PluginError, write_artifact
from mixcli.config.jobs import expand
from mixcli.config.spec import load_experiment
from mixcli.errors import MixcliError
from mixcli.execution.claims import Claim
from mixcli.results.store import Store


@pytest.fixture
def victim(tmp_path):
    d = tmp_path / "someone_else"
    d.mkdir()
    f = d / "precious.txt"
    f.write_text("keep me")
    (d / ".x.tmp").write_text("not mixcli's")
    return d


def _job(write, text=TINY):
    (job,) = expand(load_experiment(write(text)))
    return job


def test_a_failed_run_does_not_write_its_traceback_through_a_planted_link(cli, write, tmp_path, victim):
    out = tmp_path / "out"
    p = write(TINY.replace("lr: 0.05", "lr: 1.0e+6").replace("epochs: 3", "epochs: 1"))
    (job,) = expand(load_experiment(p))
    d = out / "jobs" / job.run_id
    d.mkdir(parents=True)
    (d / "traceback.txt").symlink_to(victim / "precious.txt")
    code, text = cli("run", p, "--out", out, "--device", "cpu")
    assert code == 1, text
    assert (victim / "precious.txt").read_text() == "keep me"
    runs = pd.read_parquet(out / "runs")
    assert runs["status"].tolist() == ["failed"]
    assert not (d / "traceback.txt").is_symlink() and "Traceback" in (d / "traceback.txt").read_text()


def test_a_symlinked_run_directory_receives_nothing_and_loses_nothing(cli, write, tmp_path, victim):
    out = tmp_path / "out"
    p = write(TINY.replace("epochs: 3", "epochs: 1"))
    (job,) = expand(load_experiment(p))
    (out / "jobs").mkdir(parents=True)
    (out / "jobs" / job.run_id).symlink_to(victim, target_is_directory=True)
    code, text = cli("run", p, "--out", out, "--device", "cpu")
    assert code != 0
    assert "symbolic link" in text and job.run_id in text
    assert sorted(os.listdir(victim)) == [".x.tmp", "precious.txt"]  # no checkpoint, config, and the tmp stays
    assert pd.read_parquet(out / "runs")["status"].tolist() == ["failed"]


def test_store_refuses_linked_subfolders_and_temporaries_are_removed_only_inside(tmp_path, victim):
    out = tmp_path / "out"
    out.mkdir()
    (out / "runs").symlink_to(victim, target_is_directory=True)
    with pytest.raises(MixcliError, match="symbolic link"):
        Store(out)
    (out / "runs").unlink()
    store = Store(out)
    (out / "jobs" / "r1").symlink_to(victim, target_is_directory=True)
    with pytest.raises(MixcliError, match="symbolic link"):
        store.remove_temporaries("r1")
    assert (victim / ".x.tmp").exists()
    (out / "jobs" / "r1").unlink()
    (out / "jobs" / "r1").mkdir()
    (out / "jobs" / "r1" / ".config.yaml.ab12.tmp").write_text("left by a kill")
    assert store.remove_temporaries("r1") == 1


def test_a_planted_result_file_link_is_replaced_not_followed(tmp_path, victim):
    store = Store(tmp_path / "out")
    (store.out / "runs" / "r1.parquet").symlink_to(victim / "precious.txt")
    store.write_run({"run_id": "r1", "status": "running"})
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not (store.out / "runs" / "r1.parquet").is_symlink()
    (store.out / "jobs" / "r1").mkdir()
    (store.out / "jobs" / "r1" / "checkpoint.pt").symlink_to(victim / "precious.txt")
    store.remove(store.checkpoint_path("r1"))
    assert (victim / "precious.txt").exists()


def test_plugins_write_artifacts_through_the_api_helper_only_inside_the_run(tmp_path, victim):
    run_dir = tmp_path / "out" / "jobs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "calibration.json").symlink_to(victim / "precious.txt")
    write_artifact(run_dir, "calibration.json", '{"t": 1.5}')
    assert (victim / "precious.txt").read_text() == "keep me"
    assert (run_dir / "calibration.json").read_text() == '{"t": 1.5}'
    path = write_artifact(run_dir, "selmix/gains.npz", lambda f: f.write(b"\x00\x01"))
    assert path.read_bytes() == b"\x00\x01"
    for bad in ("../escape.txt", "/etc/passwd", ""):
        with pytest.raises(PluginError, match="relative path inside the run directory"):
            write_artifact(run_dir, bad, "x")
    (run_dir / "sub").symlink_to(victim, target_is_directory=True)
    with pytest.raises(fs.UnsafePath, match="symbolic link"):
        write_artifact(run_dir, "sub/new.txt", "x")
    assert sorted(os.listdir(victim)) == [".x.tmp", "precious.txt"]


def test_a_lock_file_that_is_a_link_or_a_folder_is_one_clear_error(tmp_path, victim):
    out = tmp_path / "out"
    (out / "claims").mkdir(parents=True)
    (out / "claims" / "r1.lock").symlink_to(victim / "precious.txt")
    with pytest.raises(MixcliError, match="lock file"):
        Claim(out, "r1").acquire()
    (out / "claims" / "r2.lock").mkdir()
    with pytest.raises(MixcliError, match="lock file"):
        Claim(out, "r2").acquire()
    assert (victim / "precious.txt").read_text() == "keep me"
