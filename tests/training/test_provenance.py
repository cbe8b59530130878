"""Provenance columns (git state of the experiment's repository, versions, GPU) and --rerun-stale."""
from __future__ import annotations

import json
import shutil
import subprocess
from importlib import metadata

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import mixcli
from mixcli.training.provenance import git_state
from mixcli.results.store import RUN_COLUMNS, Store

from conftest import TINY

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git executable")
EXP = TINY.replace("epochs: 3", "epochs: 1")


def git(repo, *args) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()


def test_runs_record_git_commit_dirty_flag_and_versions(cli, tmp_path):
    repo = tmp_path / "repo"
    (repo / "exps").mkdir(parents=True)
    exp = repo / "exps" / "tiny.yaml"
    exp.write_text(EXP)
    git(repo, "init", "-q")
    git(repo, "add", "exps/tiny.yaml")
    git(repo, "commit", "-q", "-m", "first")
    head = git(repo, "rev-parse", "HEAD")

    out = tmp_path / "out"
    code, text = cli("run", exp, "--out", out, "--device", "cpu")
    assert code == 0, text
    runs = pd.read_parquet(out / "runs")
    assert list(runs.columns) == list(RUN_COLUMNS)
    r = runs.iloc[0]
    assert r.git_commit == head and len(head) == 40
    assert r.git_dirty is False or r.git_dirty == False  # noqa: E712 - numpy bool
    assert r.mixcli_version == mixcli.__version__
    assert r.torch_version == torch.__version__
    assert (r.cuda_version == torch.version.cuda) or (pd.isna(r.cuda_version) and torch.version.cuda is None)
    assert pd.isna(r.gpu)  # trained on the CPU
    assert json.loads(r.plugin_versions) == {"mixcli": metadata.version("mixcli")}

    # an edited tracked file makes the tree dirty; the commit stays HEAD
    exp.write_text(EXP.replace("lr: 0.05", "lr: 0.04"))
    code, text = cli("run", exp, "--out", out, "--device", "cpu")
    assert code == 0, text
    runs = pd.read_parquet(out / "runs").set_index("run_id")
    assert len(runs) == 2
    edited = runs[runs.config.str.contains('"lr": 0.04')].iloc[0]
    assert edited.git_commit == head and bool(edited.git_dirty) is True

    # an untracked experiment file in a clean repository counts as dirty too
    other = repo / "exps" / "new.yaml"
    git(repo, "checkout", "-q", "--", "exps/tiny.yaml")
    other.write_text(EXP)
    assert git_state(exp) == (head, False)
    assert git_state(other) == (head, True)


def test_outside_a_git_repository_the_git_columns_are_empty(cli, write, tmp_path):
    if subprocess.run(["git", "rev-parse"], cwd=tmp_path, capture_output=True).returncode == 0:
        pytest.skip("the temporary directory lies inside a git repository")
    out = tmp_path / "out"
    code, text = cli("run", write(EXP), "--out", out, "--device", "cpu")
    assert code == 0, text
    r = pd.read_parquet(out / "runs").iloc[0]
    assert pd.isna(r.git_commit) and pd.isna(r.git_dirty)
    assert git_state(tmp_path / "nowhere" / "x.yaml") == (None, None)


def _set_plugin_versions(out, run_id: str, versions: dict) -> None:
    """Rewrite a finished run's row as if an older package version had produced it."""
    store = Store(out)
    row = store.run_row(run_id)
    store.write_run({**row, "plugin_versions": json.dumps(versions)})


def test_stale_runs_are_reported_and_retrained_with_rerun_stale(cli, write, tmp_path):
    out = tmp_path / "out"
    exp = write(EXP)
    code, text = cli("run", exp, "--out", out, "--device", "cpu")
    assert code == 0, text
    rid = pd.read_parquet(out / "runs").run_id.iloc[0]
    first = pd.read_parquet(out / "runs").iloc[0]

    # same versions: nothing to say
    code, text = cli("run", exp, "--out", out, "--device", "cpu")
    assert code == 0 and "other versions" not in text and "(reused)" not in text

    _set_plugin_versions(out, rid, {"mixcli": "0.0.1"})
    code, text = cli("run", exp, "--out", out, "--device", "cpu")
    assert code == 0, text
    flat = " ".join(text.split())
    assert "1 finished run(s) were produced by other versions of plugin packages" in flat
    assert f"{rid}: mixcli 0.0.1 -> {metadata.version('mixcli')} (reused)" in flat
    assert "--rerun-stale" in flat and "already finished, skipped" in flat
    assert json.loads(pq.read_table(out / "runs" / f"{rid}.parquet").to_pandas().plugin_versions[0]) == \
        {"mixcli": "0.0.1"}  # a warning only: the run was not touched

    code, text = cli("run", exp, "--out", out, "--device", "cpu", "--rerun-stale")
    assert code == 0, text
    assert "(retrained)" in " ".join(text.split()) and "already finished, skipped" not in text
    again = pd.read_parquet(out / "runs").iloc[0]
    assert again.status == "finished" and again.attempts == 1
    assert json.loads(again.plugin_versions) == {"mixcli": metadata.version("mixcli")}
    # retrained from scratch with the same seed on the CPU: the same numbers
    assert again.final_test_accuracy == first.final_test_accuracy
    assert len(pd.read_parquet(out / "epochs")) == 1
